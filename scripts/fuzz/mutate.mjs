// Byte mutations for the TypeScript fuzz targets, with a seeded generator (the same seed
// makes the same inputs): bit flips, bytes set to edge values, chunks deleted, duplicated or
// spliced from another input, truncation, and tokens of the format inserted or swapped in.

export class Rng {
  constructor(seed) {
    this.s = (BigInt(seed) * 0x9e3779b97f4a7c15n) | 1n;
  }
  next() {
    let s = this.s;
    s ^= s >> 12n;
    s ^= (s << 25n) & 0xffffffffffffffffn;
    s ^= s >> 27n;
    this.s = s;
    return Number(((s * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn) >> 11n);
  }
  below(n) {
    return this.next() % Math.max(1, n);
  }
  chance(percent) {
    return this.below(100) < percent;
  }
  pick(items) {
    return items[this.below(items.length)];
  }
}

const EDGES = [0, 1, 0x7f, 0x80, 0xff];

export function mutate(input, other, rng, tokens = []) {
  let out = Buffer.from(input);
  for (let n = 1 + rng.below(4); n > 0; n--) {
    if (out.length === 0) {
      out = Buffer.from([rng.below(256)]);
      continue;
    }
    const at = rng.below(out.length);
    switch (rng.below(tokens.length ? 9 : 8)) {
      case 0:
        out[at] ^= 1 << rng.below(8);
        break;
      case 1:
        out[at] = rng.below(256);
        break;
      case 2:
        out[at] = rng.pick(EDGES);
        break;
      case 3: {
        const len = 1 + rng.below(Math.min(64, out.length - at));
        out = Buffer.concat([out.subarray(0, at), out.subarray(at + len)]);
        break;
      }
      case 4: {
        const len = 1 + rng.below(Math.min(64, out.length - at));
        const to = rng.below(out.length);
        out = Buffer.concat([out.subarray(0, to), out.subarray(at, at + len), out.subarray(to)]);
        break;
      }
      case 5:
        out = out.subarray(0, at);
        break;
      case 6: {
        if (other.length === 0) break;
        const from = rng.below(other.length);
        const len = 1 + rng.below(Math.min(256, other.length - from));
        out = Buffer.concat([out.subarray(0, at), Buffer.from(other.subarray(from, from + len)), out.subarray(at)]);
        break;
      }
      case 7: {
        const noise = Buffer.from(Array.from({ length: 1 + rng.below(16) }, () => rng.below(256)));
        out = Buffer.concat([out.subarray(0, at), noise, out.subarray(at)]);
        break;
      }
      default: {
        // A token of the format, in place of a few bytes or between them.
        const token = Buffer.from(rng.pick(tokens), 'latin1');
        const drop = rng.chance(50) ? rng.below(Math.min(8, out.length - at) + 1) : 0;
        out = Buffer.concat([out.subarray(0, at), token, out.subarray(at + drop)]);
      }
    }
  }
  return out;
}
