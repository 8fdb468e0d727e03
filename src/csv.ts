/**
 * CSV as RFC 4180 writes it, safe to open in a spreadsheet.
 *
 * A cell holding a comma, a double quote or a line break is quoted, its quotes doubled. A text
 * cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return would be read as a
 * formula by Excel, LibreOffice and Google Sheets (a file name such as `=HYPERLINK(...)`
 * becomes a live link): it gets a leading `'`, which spreadsheets show as text. Numbers are
 * written as they are; a negative number is not a formula.
 */

const FORMULA_START = /^[=+\-@\t\r]/;
const NEEDS_QUOTES = /[",\r\n]/;

/** One cell. */
export function csvCell(value: string | number): string {
  if (typeof value === 'number') return String(value);
  const text = FORMULA_START.test(value) ? `'${value}` : value;
  return NEEDS_QUOTES.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/** One record, without its line ending (RFC 4180 ends records with CRLF; we print LF lines). */
export function csvRow(cells: readonly (string | number)[]): string {
  return cells.map(csvCell).join(',');
}
