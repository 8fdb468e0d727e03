/**
 * Keeping every image path inside its data folder: a label file is input from outside, and a
 * `../../etc/passwd` or a symlink out of the folder must not be read.
 *
 * Links are found from one listing per folder, not one system call per file: AffectNet's
 * 287,651 training rows sit in about a thousand folders, and resolving each file through the
 * file system (a `realpath`, about 10 microseconds here) took longer than reading the list.
 */
import { readdirSync, realpathSync } from 'node:fs';
import path from 'node:path';

import { DataError } from './types.js';

/** What a folder under the data root is, once looked at. */
interface Folder {
  /** The folder's real path (through any links above it). */
  real: string;
  /** Whether that real path is the data folder or inside it. */
  inside: boolean;
  /** Names of the entries that are symbolic links. */
  links: Set<string>;
}

/** A line number, or a way to find it when an error needs it (finding it may cost a scan). */
export type LineRef = number | (() => number | undefined) | undefined;

export class DataRoot {
  readonly dir: string;
  private readonly real: string;
  /** `dir` with a trailing separator: what every path inside it starts with. */
  private readonly prefix: string;
  /** Absolute folder path -> its listing, or null when it does not exist. */
  private readonly folders = new Map<string, Folder | null>();

  constructor(dir: string) {
    this.dir = path.resolve(dir);
    try {
      this.real = realpathSync(this.dir);
    } catch {
      throw new DataError('the data folder does not exist', this.dir);
    }
    this.prefix = this.dir.endsWith(path.sep) ? this.dir : this.dir + path.sep;
  }

  /**
   * The absolute path of `rel` inside the folder, or a DataError naming the entry and where
   * it came from. A missing file passes (it is skipped and reported when read); one that
   * exists must resolve, through any symlinks, inside the folder.
   */
  resolve(rel: string, file: string, line?: LineRef): string {
    const fail = (message: string) => new DataError(message, file, typeof line === 'function' ? line() : line);
    if (rel.length === 0) throw fail('empty file name');
    if (path.isAbsolute(rel) || path.win32.isAbsolute(rel) || rel.includes('\0')) {
      throw fail(`image path '${rel}' is absolute: paths must be relative to the data folder ${this.dir}`);
    }
    // path.resolve normalises `..` away, so a prefix test is enough (path.relative costs more).
    const full = path.resolve(this.dir, rel);
    if (!full.startsWith(this.prefix)) throw fail(`image path '${rel}' escapes the data folder ${this.dir}`);
    const folder = this.folder(path.dirname(full));
    if (folder === null) return full; // missing: reported as unreadable when the pipeline reaches it
    if (!folder.inside) {
      throw fail(`image path '${rel}' lies in a link to ${folder.real}, outside the data folder ${this.dir}`);
    }
    if (!folder.links.has(path.basename(full))) return full;
    let real: string;
    try {
      real = realpathSync(full);
    } catch {
      return full; // a dangling link: unreadable, reported when read
    }
    if (!isInside(this.real, real)) throw fail(`image path '${rel}' is a link to ${real}, outside the data folder ${this.dir}`);
    return full;
  }

  private folder(dir: string): Folder | null {
    let known = this.folders.get(dir);
    if (known !== undefined) return known;
    try {
      const real = realpathSync(dir);
      const links = new Set(
        readdirSync(dir, { withFileTypes: true })
          .filter((e) => e.isSymbolicLink())
          .map((e) => e.name),
      );
      known = { real, inside: real === this.real || isInside(this.real, real), links };
    } catch {
      known = null;
    }
    this.folders.set(dir, known);
    return known;
  }
}

function isInside(dir: string, target: string): boolean {
  const rel = path.relative(dir, target);
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}
