/**
 * Where a data folder keeps its labels and images. Two AffectNet layouts are recognised:
 *
 * - `affectnet-unpacked`, as the data set's owners ship it: `Manually_Annotated_file_lists/`
 *   with `training.csv` (a header row) and `validation.csv` (none), image paths relative to
 *   `Manually_Annotated_Images/`;
 * - `affectnet-flat`: `training.csv` and `validation.csv` at the top, paths relative to the
 *   folder itself (what `motivnet synth` writes).
 *
 * Otherwise a folder of class folders is the `folders` format. Files named explicitly
 * (labels, test labels, image folder) override what the layout would give.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';

import { parseClass } from './labels.js';
import { DataError } from './types.js';

export type LayoutName = 'affectnet-unpacked' | 'affectnet-flat' | 'folders';

export interface AffectNetFiles {
  layout: Exclude<LayoutName, 'folders'>;
  /** The training list (sampled and split into train and validation). */
  training: string;
  /** The test list (AffectNet's validation set), when there is one. */
  validation?: string;
  /** The folder the lists' paths are relative to. */
  images: string;
}

export const UNPACKED_LISTS = 'Manually_Annotated_file_lists';
export const UNPACKED_IMAGES = 'Manually_Annotated_Images';

const isFile = (p: string) => existsSync(p) && statSync(p).isFile();
const isDir = (p: string) => existsSync(p) && statSync(p).isDirectory();

/** The AffectNet layout of `root`, or undefined when it has neither. */
export function detectAffectNet(root: string): AffectNetFiles | undefined {
  const lists = path.join(root, UNPACKED_LISTS);
  if (isFile(path.join(lists, 'training.csv'))) {
    const validation = path.join(lists, 'validation.csv');
    return {
      layout: 'affectnet-unpacked',
      training: path.join(lists, 'training.csv'),
      validation: isFile(validation) ? validation : undefined,
      images: path.join(root, UNPACKED_IMAGES),
    };
  }
  if (isFile(path.join(root, 'training.csv'))) {
    const validation = path.join(root, 'validation.csv');
    return { layout: 'affectnet-flat', training: path.join(root, 'training.csv'), validation: isFile(validation) ? validation : undefined, images: root };
  }
  return undefined;
}

/** AffectNet's files under `root`, or an error that says what was looked for. */
export function affectNetFiles(root: string): AffectNetFiles {
  if (!isDir(root)) throw new DataError('the data folder does not exist', path.resolve(root));
  const found = detectAffectNet(root);
  if (!found) {
    throw new DataError(
      `no AffectNet file list found: looked for ${path.join(UNPACKED_LISTS, 'training.csv')} (AffectNet as unpacked, images in ${UNPACKED_IMAGES}/) and training.csv (flat layout)`,
      path.resolve(root),
    );
  }
  if (!isDir(found.images)) {
    throw new DataError(`the file lists are here but the image folder ${UNPACKED_IMAGES}/ is missing`, path.resolve(root));
  }
  return found;
}

/** The format of a data folder given without `--format`: an AffectNet layout, or class folders. */
export function detectFormat(root: string): 'affectnet' | 'folders' {
  if (!isDir(root)) throw new DataError('the data folder does not exist', path.resolve(root));
  if (detectAffectNet(root)) return 'affectnet';
  const classFolders = readdirSync(root, { withFileTypes: true }).filter((e) => e.isDirectory() && parseClass(e.name, 8) !== undefined);
  if (classFolders.length > 0) return 'folders';
  throw new DataError(
    `cannot tell the data format: no AffectNet file list (${path.join(UNPACKED_LISTS, 'training.csv')} or training.csv) and no class folders (neutral/, happy/, ... or 0/, 1/, ...); give --format json with --labels for the reference's JSON label file`,
    path.resolve(root),
  );
}
