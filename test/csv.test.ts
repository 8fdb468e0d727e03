import { describe, expect, it } from 'vitest';

import { csvCell, csvRow } from '../src/csv.js';
import { parseRecord } from './helpers/csv.js';

describe('CSV output', () => {
  it('quotes commas, quotes and line breaks as RFC 4180 does, and reads back the same', () => {
    const hostile = ['plain.png', 'a,b.png', 'say "hi".png', 'two\nlines.png', 'cr\r.png'];
    const row = csvRow([...hostile, 0.25]);
    expect(parseRecord(row)).toEqual([...hostile, '0.25']);
    expect(csvCell('say "hi".png')).toBe('"say ""hi"".png"');
    expect(csvCell('plain.png')).toBe('plain.png');
  });

  it('neutralises cells a spreadsheet would run as formulas, and leaves numbers alone', () => {
    for (const formula of ['=HYPERLINK("http://x","y")', '+1+1', '-2+3', '@SUM(A1)', '\tX', '\r=1']) {
      const cell = parseRecord(csvCell(formula))[0]!;
      expect(cell.startsWith("'")).toBe(true);
      expect(cell.slice(1)).toBe(formula);
    }
    expect(csvCell(-0.5)).toBe('-0.5');
    expect(csvCell('images/=x.png')).toBe('images/=x.png'); // only a leading character counts
  });
});
