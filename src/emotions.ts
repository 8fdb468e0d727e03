/**
 * The emotion label sets (docs/REFERENCE_MODEL.md, section 5: AffectNet's codes): the paper's 8 classes with
 * contempt, and the 7 without it that the reference's current release uses.
 */
export const EMOTIONS_8 = ['neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger', 'contempt'] as const;
export const EMOTIONS_7 = ['neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger'] as const;

export type Emotion = (typeof EMOTIONS_8)[number];

/** The label names for a model with `numClasses` outputs; class indices for other counts. */
export function emotionLabels(numClasses: number): readonly string[] {
  if (numClasses === 8) return EMOTIONS_8;
  if (numClasses === 7) return EMOTIONS_7;
  return Array.from({ length: numClasses }, (_, i) => `class_${i}`);
}
