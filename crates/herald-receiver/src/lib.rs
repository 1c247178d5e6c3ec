//! Herald's receiver: raw request -> verified notification -> inbox (exactly-once) ->
//! provider-correct reply. (Being built.)
