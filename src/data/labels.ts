/** Class names and codes shared by the readers: AffectNet's expression codes 0-7. */
import { EMOTIONS_8 } from '../emotions.js';
import type { ClassCount } from './types.js';

/** A class given as an index ("3") or a name ("surprise", any case): its index, or undefined. */
export function parseClass(token: string, classes: ClassCount): number | undefined {
  const t = token.trim();
  if (/^\d+$/.test(t)) {
    const n = Number(t);
    return n < classes ? n : undefined;
  }
  const i = (EMOTIONS_8 as readonly string[]).indexOf(t.toLowerCase());
  return i >= 0 && i < classes ? i : undefined;
}

export function classNames(classes: ClassCount): readonly string[] {
  return EMOTIONS_8.slice(0, classes);
}
