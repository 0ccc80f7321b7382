//! Seeded mutations for replaying the fuzz targets' properties on stable (`tests/upstream_parse.rs`,
//! `tests/fuzz_inputs.rs`): reproducible, with no dependency.

/// xorshift64: reproducible mutations without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four edits of `input`: a token inserted, a few bytes deleted, a line repeated
/// elsewhere, or a byte changed.
pub fn mutate(rng: &mut Rng, input: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 | 1 => {
                let token = tokens[rng.below(tokens.len())];
                out.splice(at..at, token.iter().copied());
            }
            2 => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
            3 => {
                // Repeat a line elsewhere: duplicate series, split families, repeated keys.
                let lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
                let line = lines[rng.below(lines.len())].to_vec();
                let at = out[..at]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |p| p + 1);
                out.splice(at..at, line.into_iter().chain([b'\n']));
            }
            _ => {
                if let Some(b) = out.get_mut(at) {
                    *b = rng.next() as u8;
                }
            }
        }
    }
    out
}
