// Shared: the values that change every decode step, written once per step (prepended).
struct Step {
    // first position of this step's tokens
    pos: u32,
    // tokens in this step
    t: u32,
    // keys visible to the last token (pos + t)
    l: u32,
    // uniform random number in [0, 1) for sampling
    rand: f32,
}
