//! Byte-level mutations, and the small seeded generator that picks them: the same seed makes
//! the same inputs, so a run can be replayed.

/// xorshift64*: fast, seedable, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Values at the edges of what length and count fields hold.
pub const INTERESTING: [u64; 12] =
    [0, 1, 2, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, i64::MAX as u64, u64::MAX];

/// One to four random edits of `input`: bit flips, bytes and words set to edge values, chunks
/// deleted, duplicated or spliced in from `other`, truncation, random bytes inserted.
pub fn bytes(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if out.is_empty() {
            out.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(out.len());
        match rng.below(9) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out[at] = rng.next() as u8,
            2 => out[at] = *rng.pick(&INTERESTING) as u8,
            3 => {
                let width = *rng.pick(&[2usize, 4, 8]);
                let value = rng.pick(&INTERESTING).to_le_bytes();
                let end = (at + width).min(out.len());
                out[at..end].copy_from_slice(&value[..end - at]);
            }
            4 => {
                let len = 1 + rng.below(64.min(out.len() - at));
                out.drain(at..at + len);
            }
            5 => {
                let len = 1 + rng.below(64.min(out.len() - at));
                let chunk = out[at..at + len].to_vec();
                let to = rng.below(out.len());
                out.splice(to..to, chunk);
            }
            6 => out.truncate(at),
            7 if !other.is_empty() => {
                let from = rng.below(other.len());
                let len = 1 + rng.below(256.min(other.len() - from));
                let to = rng.below(out.len());
                out.splice(to..to, other[from..from + len].iter().copied());
            }
            _ => {
                let len = 1 + rng.below(16);
                let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                out.splice(at..at, noise);
            }
        }
    }
    out
}
