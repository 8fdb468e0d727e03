/**
 * The run folder's pictures: loss and accuracy curves per epoch, and the confusion matrix,
 * drawn as SVG and rendered to PNG with sharp (no plotting dependency).
 */
import sharp from 'sharp';

export interface EpochPoint {
  epoch: number;
  trainLoss: number;
  trainAccuracy: number;
  valLoss: number;
  valAccuracy: number;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');

function panel(x0: number, title: string, series: { name: string; colour: string; values: number[] }[], epochs: number[]): string {
  const [w, h, pad] = [420, 300, 44];
  const all = series.flatMap((s) => s.values).filter(Number.isFinite);
  const lo = Math.min(...all, 0);
  const hi = Math.max(...all, 1e-9);
  const sx = (i: number) => x0 + pad + (epochs.length <= 1 ? (w - 2 * pad) / 2 : (i * (w - 2 * pad)) / (epochs.length - 1));
  const sy = (v: number) => h - pad - ((v - lo) / (hi - lo || 1)) * (h - 2 * pad);
  let out = `<text x="${x0 + w / 2}" y="22" font-size="15" text-anchor="middle">${esc(title)}</text>`;
  out += `<line x1="${x0 + pad}" y1="${h - pad}" x2="${x0 + w - pad}" y2="${h - pad}" stroke="#444"/>`;
  out += `<line x1="${x0 + pad}" y1="${pad}" x2="${x0 + pad}" y2="${h - pad}" stroke="#444"/>`;
  out += `<text x="${x0 + pad - 6}" y="${sy(hi) + 4}" font-size="11" text-anchor="end">${hi.toFixed(2)}</text>`;
  out += `<text x="${x0 + pad - 6}" y="${sy(lo) + 4}" font-size="11" text-anchor="end">${lo.toFixed(2)}</text>`;
  out += `<text x="${x0 + w / 2}" y="${h - 10}" font-size="12" text-anchor="middle">epoch</text>`;
  epochs.forEach((e, i) => (out += `<text x="${sx(i)}" y="${h - pad + 14}" font-size="10" text-anchor="middle">${e}</text>`));
  series.forEach((s, k) => {
    const pts = s.values.map((v, i) => (Number.isFinite(v) ? `${sx(i)},${sy(v)}` : '')).filter(Boolean);
    if (pts.length > 1) out += `<polyline fill="none" stroke="${s.colour}" stroke-width="2" points="${pts.join(' ')}"/>`;
    pts.forEach((p) => (out += `<circle cx="${p.split(',')[0]}" cy="${p.split(',')[1]}" r="3" fill="${s.colour}"/>`));
    out += `<text x="${x0 + w - pad}" y="${pad + 14 * k}" font-size="11" text-anchor="end" fill="${s.colour}">${esc(s.name)}</text>`;
  });
  return out;
}

export async function writeCurves(file: string, points: EpochPoint[]): Promise<void> {
  const epochs = points.map((p) => p.epoch);
  const svg =
    `<svg xmlns="http://www.w3.org/2000/svg" width="860" height="300"><rect width="100%" height="100%" fill="white"/>` +
    panel(0, 'loss', [
      { name: 'train', colour: '#1f77b4', values: points.map((p) => p.trainLoss) },
      { name: 'validation', colour: '#d62728', values: points.map((p) => p.valLoss) },
    ], epochs) +
    panel(430, 'accuracy', [
      { name: 'train', colour: '#1f77b4', values: points.map((p) => p.trainAccuracy) },
      { name: 'validation', colour: '#d62728', values: points.map((p) => p.valAccuracy) },
    ], epochs) +
    `</svg>`;
  await sharp(Buffer.from(svg)).png().toFile(file);
}

export async function writeConfusion(file: string, confusion: number[][], names: readonly string[], title: string): Promise<void> {
  const n = names.length;
  const cell = 52;
  const left = 100;
  const top = 60;
  const size = left + n * cell + 20;
  const max = Math.max(1, ...confusion.flat());
  let body = `<text x="${size / 2}" y="22" font-size="15" text-anchor="middle">${esc(title)}</text>`;
  body += `<text x="${left + (n * cell) / 2}" y="44" font-size="12" text-anchor="middle">predicted</text>`;
  for (let r = 0; r < n; r++) {
    body += `<text x="${left - 6}" y="${top + r * cell + cell / 2 + 4}" font-size="11" text-anchor="end">${esc(names[r]!)}</text>`;
    for (let c = 0; c < n; c++) {
      const v = confusion[r]?.[c] ?? 0;
      const shade = Math.round(255 - (200 * v) / max);
      body += `<rect x="${left + c * cell}" y="${top + r * cell}" width="${cell}" height="${cell}" fill="rgb(${shade},${shade},255)" stroke="#999"/>`;
      body += `<text x="${left + c * cell + cell / 2}" y="${top + r * cell + cell / 2 + 4}" font-size="12" text-anchor="middle">${v}</text>`;
    }
  }
  for (let c = 0; c < n; c++) {
    body += `<text x="${left + c * cell + cell / 2}" y="${top + n * cell + 14}" font-size="10" text-anchor="middle">${esc(names[c]!.slice(0, 8))}</text>`;
  }
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${top + n * cell + 30}"><rect width="100%" height="100%" fill="white"/>${body}</svg>`;
  await sharp(Buffer.from(svg)).png().toFile(file);
}
