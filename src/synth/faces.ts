/**
 * Procedural faces for the embedded demo. Each of the 8 emotions is a set of facial cues
 * (brows, eyes, nose, mouth); everything else (skin tone, face size, position and tilt,
 * background, hair, lighting, occlusion; noise and blur are added after rendering) is drawn
 * independently of the class, so telling classes apart takes the cues. Faces are SVG in a unit
 * frame: head centred at 0, half-width 1, y down.
 */
import type { Rng } from '../data/random.js';

export interface Cues {
  /** Brow heights (inner and outer end; more negative = higher) and thickness. */
  browInner: number;
  browOuter: number;
  /** Eye opening (half-height of the eye). */
  eyeOpen: number;
  /** Mouth: a curve (curvature > 0 smiles), an open ellipse, a stretched open mouth, a smirk or a snarl. */
  mouth:
    | { kind: 'curve'; curvature: number; width: number }
    | { kind: 'open'; rx: number; ry: number; teeth: boolean; curvature: number }
    | { kind: 'smirk'; side: 1 | -1; lift: number }
    | { kind: 'snarl'; lift: number };
  /** Wrinkles across the nose (disgust). */
  noseWrinkle: boolean;
}

const u = (rng: Rng, lo: number, hi: number) => lo + (hi - lo) * rng();
const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)]!;

/** The cues of one face of class `emotion` (0 neutral ... 7 contempt), with natural variation. */
export function cuesFor(emotion: number, rng: Rng): Cues {
  const brow = (inner: number, outer: number) => ({ browInner: inner + u(rng, -0.03, 0.03), browOuter: outer + u(rng, -0.03, 0.03) });
  const eye = (open: number) => open * u(rng, 0.85, 1.15);
  switch (emotion) {
    case 0: // neutral: level brows, relaxed eyes, straight closed mouth
      return { ...brow(-0.46, -0.46), eyeOpen: eye(0.1), mouth: { kind: 'curve', curvature: u(rng, -0.02, 0.02), width: u(rng, 0.28, 0.36) }, noseWrinkle: false };
    case 1: // happy: smiling mouth (often open), cheeks narrowing the eyes
      return {
        ...brow(-0.49, -0.49),
        eyeOpen: eye(0.065),
        mouth: rng() < 0.5 ? { kind: 'curve', curvature: u(rng, 0.16, 0.24), width: u(rng, 0.34, 0.42) } : { kind: 'open', rx: u(rng, 0.3, 0.36), ry: u(rng, 0.1, 0.14), teeth: true, curvature: u(rng, 0.12, 0.18) },
        noseWrinkle: false,
      };
    case 2: // sad: inner brow ends raised, corners of the mouth down
      return { ...brow(-0.6, -0.38), eyeOpen: eye(0.08), mouth: { kind: 'curve', curvature: u(rng, -0.2, -0.13), width: u(rng, 0.28, 0.36) }, noseWrinkle: false };
    case 3: // surprise: high arched brows, wide eyes, round open mouth
      return { ...brow(-0.66, -0.64), eyeOpen: eye(0.15), mouth: { kind: 'open', rx: u(rng, 0.11, 0.15), ry: u(rng, 0.17, 0.22), teeth: false, curvature: 0 }, noseWrinkle: false };
    case 4: // fear: brows raised and drawn together, wide eyes, mouth stretched open
      return { ...brow(-0.64, -0.46), eyeOpen: eye(0.15), mouth: { kind: 'open', rx: u(rng, 0.32, 0.38), ry: u(rng, 0.06, 0.09), teeth: true, curvature: u(rng, -0.06, 0) }, noseWrinkle: false };
    case 5: // disgust: lowered brows, narrowed eyes, wrinkled nose, raised upper lip
      return { ...brow(-0.37, -0.4), eyeOpen: eye(0.055), mouth: { kind: 'snarl', lift: u(rng, 0.08, 0.13) }, noseWrinkle: true };
    case 6: // anger: brows pulled down to the centre, narrowed eyes, pressed or bared mouth
      return {
        ...brow(-0.3, -0.52),
        eyeOpen: eye(0.07),
        mouth: rng() < 0.5 ? { kind: 'curve', curvature: u(rng, -0.05, 0), width: u(rng, 0.24, 0.3) } : { kind: 'open', rx: u(rng, 0.26, 0.32), ry: u(rng, 0.07, 0.1), teeth: true, curvature: 0 },
        noseWrinkle: false,
      };
    case 7: // contempt: one lip corner raised
      return { ...brow(-0.46, -0.47), eyeOpen: eye(0.095), mouth: { kind: 'smirk', side: rng() < 0.5 ? 1 : -1, lift: u(rng, 0.12, 0.18) }, noseWrinkle: false };
    default:
      throw new RangeError(`emotion ${emotion} is not 0-7`);
  }
}

/** What varies without carrying the label. */
export interface Look {
  skin: string;
  background: [string, string];
  hair: string | null;
  /** Head centre (pixels), half-width (pixels), tilt (degrees). */
  cx: number;
  cy: number;
  radius: number;
  tilt: number;
  /** Shading: opacity and angle of a light-to-dark overlay. */
  light: number;
  lightAngle: number;
  occluder: { x: number; y: number; rx: number; ry: number; colour: string } | null;
}

/** Cheeks, forehead above the brows, chin: partial occlusion that leaves the cues mostly visible. */
const OCCLUDER_SPOTS = [{ x: -0.85, y: 0.2 }, { x: 0.85, y: 0.2 }, { x: 0, y: -0.98 }, { x: 0, y: 1.1 }] as const;

const SKINS = ['#ffdbac', '#f1c27d', '#e0ac69', '#c68642', '#a0662e', '#8d5524', '#d7a98c', '#f3d3bd'];
const HAIR = ['#1b1b1b', '#3b2a1a', '#6b4423', '#a67b5b', '#c9a66b', '#777777'];

function colour(rng: Rng): string {
  const c = () => Math.floor(u(rng, 20, 236));
  return `rgb(${c()},${c()},${c()})`;
}

export function lookFor(rng: Rng, width: number, height: number): Look {
  const size = Math.min(width, height);
  const radius = size * u(rng, 0.27, 0.33);
  return {
    skin: pick(rng, SKINS),
    background: [colour(rng), colour(rng)],
    hair: rng() < 0.6 ? pick(rng, HAIR) : null,
    cx: width / 2 + size * u(rng, -0.05, 0.05),
    cy: height / 2 + size * u(rng, -0.04, 0.06),
    radius,
    tilt: u(rng, -12, 12),
    light: u(rng, 0, 0.3),
    lightAngle: u(rng, 0, 360),
    // A hand or an object over a cheek or the forehead, away from the eyes and the mouth.
    occluder: rng() < 0.25 ? { ...pick(rng, OCCLUDER_SPOTS), rx: u(rng, 0.25, 0.4), ry: u(rng, 0.15, 0.22), colour: rng() < 0.5 ? pick(rng, SKINS) : colour(rng) } : null,
  };
}

const f = (x: number) => x.toFixed(3);

function mouthSvg(m: Cues['mouth']): string {
  const y = 0.56;
  const lip = 'stroke="#5a1f1f" stroke-width="0.07" fill="none" stroke-linecap="round"';
  switch (m.kind) {
    case 'curve':
      return `<path d="M ${f(-m.width)} ${f(y)} Q 0 ${f(y + 2 * m.curvature)} ${f(m.width)} ${f(y)}" ${lip}/>`;
    case 'open': {
      // An open mouth whose corners follow the curvature: a smile bends it up at the sides.
      const top = `M ${f(-m.rx)} ${f(y - m.curvature)} Q 0 ${f(y - m.ry)} ${f(m.rx)} ${f(y - m.curvature)}`;
      const bottom = `Q 0 ${f(y + m.ry * 2 + m.curvature)} ${f(-m.rx)} ${f(y - m.curvature)} Z`;
      let out = `<path d="${top} ${bottom}" fill="#3a0d0d" stroke="#5a1f1f" stroke-width="0.04"/>`;
      if (m.teeth) out += `<rect x="${f(-m.rx * 0.6)}" y="${f(y - m.ry * 0.55)}" width="${f(m.rx * 1.2)}" height="${f(m.ry * 0.45)}" fill="#f4f4f0"/>`;
      return out;
    }
    case 'smirk': {
      const s = m.side;
      return `<path d="M ${f(-0.3 * s)} ${f(y + 0.02)} Q ${f(0.05 * s)} ${f(y + 0.05)} ${f(0.32 * s)} ${f(y - m.lift)}" ${lip}/>`;
    }
    case 'snarl':
      return (
        `<path d="M -0.3 ${f(y + 0.03)} Q -0.15 ${f(y - m.lift)} 0 ${f(y - m.lift * 0.6)} Q 0.15 ${f(y - m.lift)} 0.3 ${f(y + 0.03)}" ${lip}/>` +
        `<path d="M -0.22 ${f(y + 0.1)} Q 0 ${f(y + 0.06)} 0.22 ${f(y + 0.1)}" ${lip}/>`
      );
  }
}

/** The face as an SVG document of width x height pixels. */
export function faceSvg(cues: Cues, look: Look, width: number, height: number): string {
  const [bg0, bg1] = look.background;
  const eye = (side: 1 | -1) => {
    const x = 0.38 * side;
    return (
      `<ellipse cx="${f(x)}" cy="-0.15" rx="0.17" ry="${f(cues.eyeOpen)}" fill="#fbfbf8" stroke="#3a2a1a" stroke-width="0.03"/>` +
      `<circle cx="${f(x)}" cy="-0.15" r="${f(Math.min(0.075, cues.eyeOpen))}" fill="#2a1d12"/>`
    );
  };
  const brow = (side: 1 | -1) =>
    `<path d="M ${f(0.16 * side)} ${f(cues.browInner)} L ${f(0.58 * side)} ${f(cues.browOuter)}" stroke="#2b1d10" stroke-width="0.08" stroke-linecap="round"/>`;
  const wrinkle = cues.noseWrinkle
    ? `<path d="M -0.1 0.0 Q 0 -0.04 0.1 0.0 M -0.12 0.07 Q 0 0.03 0.12 0.07" stroke="#6b3b2b" stroke-width="0.03" fill="none"/>`
    : '';
  const hair = look.hair ? `<path d="M -1.02 -0.35 Q -1.0 -1.45 0 -1.32 Q 1.0 -1.45 1.02 -0.35 Q 0.7 -0.95 0 -0.98 Q -0.7 -0.95 -1.02 -0.35 Z" fill="${look.hair}"/>` : '';
  const occ = look.occluder
    ? `<ellipse cx="${f(look.occluder.x)}" cy="${f(look.occluder.y)}" rx="${f(look.occluder.rx)}" ry="${f(look.occluder.ry)}" fill="${look.occluder.colour}"/>`
    : '';
  const r = look.radius;
  const a = (look.lightAngle * Math.PI) / 180;
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">` +
    `<defs><linearGradient id="bg" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="${bg0}"/><stop offset="1" stop-color="${bg1}"/></linearGradient>` +
    `<linearGradient id="light" x1="${f(0.5 - Math.cos(a) / 2)}" y1="${f(0.5 - Math.sin(a) / 2)}" x2="${f(0.5 + Math.cos(a) / 2)}" y2="${f(0.5 + Math.sin(a) / 2)}">` +
    `<stop offset="0" stop-color="#ffffff"/><stop offset="1" stop-color="#000000"/></linearGradient></defs>` +
    `<rect width="${width}" height="${height}" fill="url(#bg)"/>` +
    `<g transform="translate(${f(look.cx)} ${f(look.cy)}) rotate(${f(look.tilt)}) scale(${f(r)})">` +
    `<rect x="-0.32" y="1.0" width="0.64" height="0.9" fill="${look.skin}"/>` +
    `<ellipse cx="0" cy="0" rx="1" ry="1.25" fill="${look.skin}" stroke="#00000033" stroke-width="0.03"/>` +
    hair +
    brow(1) + brow(-1) + eye(1) + eye(-1) +
    `<path d="M 0 -0.05 L -0.09 0.22 Q 0 0.27 0.09 0.22" stroke="#00000055" stroke-width="0.035" fill="none"/>` +
    wrinkle +
    mouthSvg(cues.mouth) +
    occ +
    `</g>` +
    `<rect width="${width}" height="${height}" fill="url(#light)" opacity="${f(look.light)}"/>` +
    `</svg>`
  );
}

/** The face's bounding box in pixels (the head ellipse, tilt ignored), clamped to the image. */
export function faceBox(look: Look, width: number, height: number): { x: number; y: number; width: number; height: number } {
  const x0 = Math.max(0, Math.floor(look.cx - look.radius));
  const y0 = Math.max(0, Math.floor(look.cy - 1.25 * look.radius));
  const x1 = Math.min(width, Math.ceil(look.cx + look.radius));
  const y1 = Math.min(height, Math.ceil(look.cy + 1.25 * look.radius));
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}
