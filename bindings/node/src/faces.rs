//! Faces of photographs, framed for the classifier: `detectFaces` (a Promise, on the addon's
//! shared threads) for a library's batch, `detectFacesSync` for a decoding worker's own thread.

use napi::bindgen_prelude::{Object, Task, Uint8Array};
use napi::{Env, Result};
use napi_derive::napi;

use crate::calls;
use crate::error::{invalid, no_panic, IntoJs};
use crate::options::{Input, NativeInput};
use motivnet::detector::{Face, FaceOptions};
use motivnet::Geometry;

/// How faces are found and framed, and the size their crops are resized to.
#[napi(object)]
pub struct NativeFaceOptions {
    /// The crop's margin around the face box, a fraction of its larger side on each side.
    /// @default 0.25
    pub margin: Option<f64>,
    /// Faces scoring below this are dropped. @default 0.5
    pub min_score: Option<f64>,
    /// At most this many faces an image, best first. @default 16
    pub max_faces: Option<u32>,
    /// Also look for small faces in overlapping tiles of the image (slower). @default false
    pub small_faces: Option<bool>,
    /// Turn each crop so the eyes are level. @default false
    pub upright: Option<bool>,
    /// Resize each face's crop to this many pixels (the model's input), as the model would.
    pub crop_width: Option<u32>,
    pub crop_height: Option<u32>,
    /// How a crop is fitted to that size: `letterbox` (default) or `stretch`.
    pub geometry: Option<String>,
}

/// A face in the photograph's pixels.
#[napi(object)]
pub struct NativeFace {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub score: f64,
    /// Right eye, left eye, nose tip, mouth, right ear, left ear: x and y each (12 values).
    pub keypoints: Vec<f64>,
    /// The part of the photograph the classifier sees: x, y, width, height.
    pub crop: Vec<u32>,
    /// How far the crop was turned to level the eyes, in degrees counter-clockwise (0 unless
    /// upright).
    pub angle: f64,
}

/// One photograph's faces, and their crops resized (HWC, back to back) when a size was given.
#[napi(object)]
pub struct NativeFaces {
    pub faces: Vec<NativeFace>,
    pub crops: Option<Uint8Array>,
}

struct Resize {
    width: usize,
    height: usize,
    geometry: Geometry,
}

fn parse_options(options: Option<NativeFaceOptions>) -> Result<(FaceOptions, Option<Resize>)> {
    let defaults = FaceOptions::default();
    let Some(o) = options else { return Ok((defaults, None)) };
    let face = FaceOptions {
        margin: o.margin.map_or(defaults.margin, |m| m as f32),
        min_score: o.min_score.map_or(defaults.min_score, |s| s as f32),
        max_faces: o.max_faces.map_or(defaults.max_faces, |n| n as usize),
        small_faces: o.small_faces.unwrap_or(defaults.small_faces),
        upright: o.upright.unwrap_or(defaults.upright),
    };
    face.validate().js()?;
    let resize = match (o.crop_width, o.crop_height) {
        (None, None) => None,
        (Some(width), Some(height)) if width > 0 && height >= width => {
            let geometry: Geometry =
                o.geometry.as_deref().unwrap_or("letterbox").parse().map_err(crate::error::to_js)?;
            if geometry == Geometry::None {
                return Err(invalid("a face crop is fitted by letterbox or stretch, not none"));
            }
            Some(Resize { width: width as usize, height: height as usize, geometry })
        }
        (w, h) => {
            return Err(invalid(format!(
                "cropWidth and cropHeight go together, positive, height at least width; got {w:?} x {h:?}"
            )))
        }
    };
    Ok((face, resize))
}

fn to_js(face: &Face) -> NativeFace {
    let [x, y, width, height] = face.bbox.map(f64::from);
    NativeFace {
        x,
        y,
        width,
        height,
        score: face.score as f64,
        keypoints: face.keypoints.iter().flatten().map(|&v| v as f64).collect(),
        crop: [face.crop.x, face.crop.y, face.crop.width, face.crop.height].map(|v| v as u32).to_vec(),
        angle: (face.angle as f64).to_degrees(),
    }
}

/// The faces of one image and, when asked, their crops resized.
fn faces_of(
    rgb: &[u8],
    width: usize,
    height: usize,
    options: &FaceOptions,
    resize: Option<&Resize>,
) -> motivnet::Result<(Vec<Face>, Option<Vec<u8>>)> {
    let faces = motivnet::detector::find_faces(rgb, width, height, options)?;
    let crops = match resize {
        Some(r) => Some(motivnet::detector::crop_levels(rgb, width, &faces, r.geometry, r.height, r.width)?),
        None => None,
    };
    Ok((faces, crops))
}

/// The faces of one RGB image (HWC), on the calling thread: for a decoding worker, whose
/// thread is its own (a few milliseconds for a 1920 x 1080 photograph). Never call it on a
/// main thread.
#[napi]
pub fn detect_faces_sync(
    pixels: Uint8Array,
    width: u32,
    height: u32,
    options: Option<NativeFaceOptions>,
) -> Result<NativeFaces> {
    let (options, resize) = parse_options(options)?;
    let (w, h) = (width as usize, height as usize);
    let size = [(w, h)];
    // Checks the buffer's length against the size.
    let image = motivnet::ImageBatch::new(&pixels, &size).js()?;
    let (faces, crops) = no_panic(|| faces_of(image.data, w, h, &options, resize.as_ref()).js())?;
    Ok(NativeFaces { faces: faces.iter().map(to_js).collect(), crops: crops.map(Uint8Array::new) })
}

/// The faces of each image of a batch of RGB images (pixels with their sizes), off the
/// JavaScript thread.
#[napi(ts_return_type = "Promise<NativeFaces[]>")]
pub fn detect_faces(env: &Env, input: NativeInput, options: Option<NativeFaceOptions>) -> Result<Object<'_>> {
    let Input::Pixels { data, sizes, .. } = Input::try_from(input)? else {
        return Err(invalid("detectFaces takes pixels, not a tensor"));
    };
    let (options, resize) = parse_options(options)?;
    calls::start(env, None, DetectTask { data, sizes, options, resize })
}

struct DetectTask {
    data: Uint8Array,
    sizes: Vec<(usize, usize)>,
    options: FaceOptions,
    resize: Option<Resize>,
}

#[napi]
impl Task for DetectTask {
    type Output = Vec<(Vec<Face>, Option<Vec<u8>>)>;
    type JsValue = Vec<NativeFaces>;

    fn compute(&mut self) -> Result<Self::Output> {
        let batch = motivnet::ImageBatch::new(&self.data, &self.sizes).js()?;
        batch
            .images()
            .into_iter()
            .map(|(rgb, w, h)| faces_of(rgb, w, h, &self.options, self.resize.as_ref()).js())
            .collect()
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output
            .into_iter()
            .map(|(faces, crops)| NativeFaces {
                faces: faces.iter().map(to_js).collect(),
                crops: crops.map(Uint8Array::new),
            })
            .collect())
    }
}
