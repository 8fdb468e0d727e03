/**
 * Keeping every image path inside its data folder: a label file is input from outside, and a
 * `../../etc/passwd` or a symlink out of the folder must not be read.
 */
import { realpathSync } from 'node:fs';
import path from 'node:path';

import { DataError } from './types.js';

export class DataRoot {
  readonly dir: string;
  private readonly real: string;

  constructor(dir: string) {
    this.dir = path.resolve(dir);
    try {
      this.real = realpathSync(this.dir);
    } catch {
      throw new DataError('the data folder does not exist', this.dir);
    }
  }

  /**
   * The absolute path of `rel` inside the folder, or a DataError naming the entry and where
   * it came from. A missing file passes (it is skipped and reported when read); one that
   * exists must resolve, through any symlinks, inside the folder.
   */
  resolve(rel: string, file: string, line?: number): string {
    if (rel.length === 0) throw new DataError('empty file name', file, line);
    if (path.isAbsolute(rel) || path.win32.isAbsolute(rel) || rel.includes('\0')) {
      throw new DataError(`image path '${rel}' is absolute: paths must be relative to the data folder ${this.dir}`, file, line);
    }
    const full = path.resolve(this.dir, rel);
    if (!isInside(this.dir, full)) {
      throw new DataError(`image path '${rel}' escapes the data folder ${this.dir}`, file, line);
    }
    let real: string;
    try {
      real = realpathSync(full);
    } catch {
      return full; // missing: reported as unreadable when the pipeline reaches it
    }
    if (!isInside(this.real, real)) {
      throw new DataError(`image path '${rel}' is a link to ${real}, outside the data folder ${this.dir}`, file, line);
    }
    return full;
  }
}

function isInside(dir: string, target: string): boolean {
  const rel = path.relative(dir, target);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
}
