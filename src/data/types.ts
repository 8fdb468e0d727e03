/** What the readers produce: labelled image paths, checked to stay inside their data folder. */

export interface FaceBox {
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface Sample {
  /** Absolute path, resolved inside the data folder. */
  path: string;
  /** The path as the label source wrote it, relative to the data folder (for reports). */
  relPath: string;
  /** Class index in the chosen label set. */
  label: number;
  /** Face box from the label file (AffectNet), in the stored image's pixels. */
  box?: FaceBox;
}

/** 8 classes (with contempt, the paper) or 7 (without, the reference's current release). */
export type ClassCount = 7 | 8;

export interface ReadResult {
  samples: Sample[];
  /** Entries left out on purpose, by reason (e.g. "8 none", "contempt (7-class label set)"). */
  dropped: Record<string, number>;
  /** What was read, for messages. */
  source: string;
}

/** A label file or folder that cannot be used: names the file and, where known, the line. */
export class DataError extends Error {
  constructor(
    message: string,
    readonly file: string,
    readonly line?: number,
  ) {
    super(line === undefined ? `${file}: ${message}` : `${file}:${line}: ${message}`);
    this.name = 'DataError';
  }
}

export function countBy(dropped: Record<string, number>, reason: string): void {
  dropped[reason] = (dropped[reason] ?? 0) + 1;
}
