//! A short, deterministic fuzz run inside the test suite: every decoder gets random bytes
//! and thousands of mutations of valid signed requests, and must never panic. (The
//! coverage-guided targets in `fuzz/` call the same entry points for long runs.)
use herald_protocols::fuzzing::{parse_any, seeds, verify_any};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..8) {
        if v.len() < 2 {
            break;
        }
        let i = rng.gen_range(1..v.len());
        match rng.gen_range(0..5) {
            0 => v[i] = rng.gen(),
            1 => {
                v.remove(i);
            }
            2 => v.insert(i, rng.gen()),
            3 => v.truncate(i),
            _ => {
                let j = rng.gen_range(1..v.len());
                v.swap(i, j);
            }
        }
    }
    v
}

#[test]
fn decoders_never_panic_on_random_input() {
    let mut rng = StdRng::seed_from_u64(0x4e52_4c44);
    for _ in 0..3000 {
        let len = rng.gen_range(0..600);
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        verify_any(&data);
        parse_any(&data);
    }
}

#[test]
fn decoders_never_panic_on_mutated_valid_requests() {
    let seeds = seeds();
    assert_eq!(
        seeds.len(),
        herald_protocols::Profile::ALL.len(),
        "a seed per profile"
    );
    let mut rng = StdRng::seed_from_u64(7);
    for seed in &seeds {
        verify_any(seed);
        for _ in 0..600 {
            let m = mutate(&mut rng, seed);
            verify_any(&m);
            parse_any(&m[1..]);
        }
    }
}
