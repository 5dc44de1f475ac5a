//! Thumbnails: real scaled images for PNG, JPEG and WebP, cached on disk under
//! `media/thumbnails/<aa>/<blake3>-<w>x<h>-<method>.<ext>`; other types get the original.
//! Images are never upscaled, and content smaller than the request is served as is.

use std::collections::HashMap;
use std::io::{BufReader, Cursor};
use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::Response;
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::download::{content_disposition, essence, respond, serve_original};
use super::{blob, find_content, timeout_param};
use crate::api::extract::Auth;
use crate::api::room_events::query_map;
use crate::services::AppState;
use crate::{Error, Result};

/// Images over this many pixels are refused rather than decoded (a 50 MP RGBA image is
/// already 200 MB in memory).
const MAX_PIXELS: u64 = 50_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Crop,
    Scale,
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
pub async fn authed(
    State(s): State<AppState>,
    _auth: Auth,
    Path((server_name, media_id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response> {
    thumbnail(&s, &server_name, &media_id, &uri).await
}

/// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}` (deprecated, unauthenticated)
pub async fn legacy(
    State(s): State<AppState>,
    Path((server_name, media_id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response> {
    thumbnail(&s, &server_name, &media_id, &uri).await
}

fn dimension(q: &HashMap<String, String>, name: &str) -> Result<u32> {
    let v = q
        .get(name)
        .ok_or_else(|| Error::invalid_param(format!("{name} is required")))?;
    v.parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::invalid_param(format!("{name} must be a positive integer, not {v:?}")))
}

fn cannot_thumbnail() -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
        "Cannot generate thumbnails for the requested content",
    )
}

async fn thumbnail(s: &AppState, server_name: &str, media_id: &str, uri: &Uri) -> Result<Response> {
    let q = query_map(uri)?;
    let (width, height) = (dimension(&q, "width")?, dimension(&q, "height")?);
    let method = match q.get("method").map(String::as_str) {
        None | Some("scale") => Method::Scale,
        Some("crop") => Method::Crop,
        Some(m) => return Err(Error::invalid_param(format!("unknown method {m:?}"))),
    };
    let animated = match q.get("animated").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(a) => {
            return Err(Error::invalid_param(format!(
                "animated must be a boolean, not {a:?}"
            )));
        }
    };
    let timeout = timeout_param(&q)?;
    let (media, hash) = find_content(s, server_name, media_id, timeout).await?;
    let content_type = essence(media.content_type.as_deref().unwrap_or_default());
    let output = match content_type.as_str() {
        "image/jpeg" => ImageFormat::Jpeg,
        "image/png" | "image/webp" => ImageFormat::Png,
        // We cannot decode GIFs, so the only answer would be the (possibly animated)
        // original, which the spec forbids when the client said `animated=false`.
        "image/gif" if animated == Some(false) => return Err(cannot_thumbnail()),
        _ => return serve_original(s, &media, &hash, None).await,
    };
    let path = cache_path(s, &hash, width, height, method, output);
    if let Ok(bytes) = tokio::fs::read(&path).await {
        return thumbnail_response(output, bytes);
    }
    let blob = blob::blob_path(s, &hash)?;
    let state = s.clone();
    let made = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>> {
        let Some(bytes) = render(&blob, width, height, method, output)? else {
            return Ok(None);
        };
        // Failing to cache costs only a later re-render.
        if let Err(e) = blob::write_atomically(&state, &path, &bytes) {
            tracing::warn!(error = %e, "could not cache thumbnail");
        }
        Ok(Some(bytes))
    })
    .await
    .map_err(|e| Error::internal(format!("task failed: {e}")))??;
    match made {
        Some(bytes) => thumbnail_response(output, bytes),
        None => serve_original(s, &media, &hash, None).await,
    }
}

fn cache_path(s: &AppState, hash: &str, w: u32, h: u32, method: Method, output: ImageFormat) -> PathBuf {
    let method = match method {
        Method::Crop => "crop",
        Method::Scale => "scale",
    };
    let ext = if output == ImageFormat::Jpeg { "jpg" } else { "png" };
    blob::media_dir(s)
        .join("thumbnails")
        .join(&hash[..2])
        .join(format!("{hash}-{w}x{h}-{method}.{ext}"))
}

fn thumbnail_response(output: ImageFormat, bytes: Vec<u8>) -> Result<Response> {
    let (content_type, name) = if output == ImageFormat::Jpeg {
        ("image/jpeg", "thumbnail.jpg")
    } else {
        ("image/png", "thumbnail.png")
    };
    respond(
        content_type,
        &content_disposition("inline", Some(name)),
        bytes.into(),
    )
}

/// The thumbnail's encoded bytes, or `None` when the original is already no larger than
/// asked. Blocking: decodes and resizes.
fn render(
    blob: &std::path::Path,
    width: u32,
    height: u32,
    method: Method,
    output: ImageFormat,
) -> Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(blob).map_err(|e| Error::internal(format!("opening blob: {e}")))?;
    let reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| Error::internal(format!("reading blob: {e}")))?;
    // The bytes decide, not the declared type, and only the formats we build decoders for.
    if !matches!(
        reader.format(),
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)
    ) {
        return Err(cannot_thumbnail());
    }
    let decoder = reader.into_decoder().map_err(|_| cannot_thumbnail())?;
    let (ow, oh) = decoder.dimensions();
    if u64::from(ow) * u64::from(oh) > MAX_PIXELS {
        return Err(Error::too_large("Content is too large to thumbnail"));
    }
    let Some(plan) = plan(ow, oh, width, height, method) else {
        return Ok(None);
    };
    let img = DynamicImage::from_decoder(decoder).map_err(|_| cannot_thumbnail())?;
    let img = match plan.crop {
        Some((x, y, w, h)) => img.crop_imm(x, y, w, h),
        None => img,
    };
    let img = if (img.width(), img.height()) == plan.size {
        img
    } else {
        img.resize_exact(plan.size.0, plan.size.1, FilterType::Triangle)
    };
    let mut out = Cursor::new(Vec::new());
    let encoded = if output == ImageFormat::Jpeg {
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
        DynamicImage::ImageRgb8(img.to_rgb8()).write_with_encoder(encoder)
    } else {
        img.write_to(&mut out, ImageFormat::Png)
    };
    encoded.map_err(|e| Error::internal(format!("encoding thumbnail: {e}")))?;
    Ok(Some(out.into_inner()))
}

/// What to do to an `ow`×`oh` image: an optional centred crop `(x, y, w, h)` of the
/// original, then a resize to `size`.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    crop: Option<(u32, u32, u32, u32)>,
    size: (u32, u32),
}

/// `None` when the original fits within the request (served as is). `scale` fits the image
/// within `w`×`h` keeping its aspect; `crop` takes the largest centred region with the
/// requested aspect and shrinks it to `w`×`h`, or leaves it unscaled when it is smaller
/// than that (never upscaling).
fn plan(ow: u32, oh: u32, w: u32, h: u32, method: Method) -> Option<Plan> {
    if w >= ow && h >= oh {
        return None;
    }
    let (ow64, oh64, w64, h64) = (u64::from(ow), u64::from(oh), u64::from(w), u64::from(h));
    match method {
        Method::Scale => {
            // Fit factor is min(w/ow, h/oh); compare as cross products to stay in integers.
            let size = if w64 * oh64 <= h64 * ow64 {
                (w, div_round(oh64 * w64, ow64))
            } else {
                (div_round(ow64 * h64, oh64), h)
            };
            Some(Plan { crop: None, size })
        }
        Method::Crop => {
            let (cw, ch) = if ow64 * h64 > oh64 * w64 {
                (div_round(oh64 * w64, h64).min(ow), oh)
            } else {
                (ow, div_round(ow64 * h64, w64).min(oh))
            };
            let crop = ((cw, ch) != (ow, oh)).then_some(((ow - cw) / 2, (oh - ch) / 2, cw, ch));
            let size = if w <= ow && h <= oh { (w, h) } else { (cw, ch) };
            Some(Plan { crop, size })
        }
    }
}

/// `n / d` rounded to nearest, at least 1, and within `u32`.
fn div_round(n: u64, d: u64) -> u32 {
    u32::try_from((n + d / 2) / d.max(1)).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::{Method, Plan, plan};

    #[test]
    fn scale_fits_within_keeping_aspect() {
        assert_eq!(
            plan(400, 200, 100, 100, Method::Scale).map(|p| p.size),
            Some((100, 50))
        );
        assert_eq!(
            plan(400, 200, 500, 50, Method::Scale).map(|p| p.size),
            Some((100, 50))
        );
        assert_eq!(plan(400, 200, 400, 200, Method::Scale), None);
        assert_eq!(plan(400, 200, 800, 600, Method::Scale), None);
    }

    #[test]
    fn crop_fills_then_centres() {
        assert_eq!(
            plan(400, 200, 100, 100, Method::Crop),
            Some(Plan {
                crop: Some((100, 0, 200, 200)),
                size: (100, 100)
            })
        );
        assert_eq!(
            plan(400, 200, 200, 50, Method::Crop),
            Some(Plan {
                crop: Some((0, 50, 400, 100)),
                size: (200, 50)
            })
        );
        assert_eq!(
            plan(400, 200, 100, 150, Method::Crop),
            Some(Plan {
                crop: Some((133, 0, 133, 200)),
                size: (100, 150)
            })
        );
        // Taller than the original: crop to the aspect, but never upscale.
        assert_eq!(
            plan(400, 200, 300, 300, Method::Crop),
            Some(Plan {
                crop: Some((100, 0, 200, 200)),
                size: (200, 200)
            })
        );
        assert_eq!(plan(400, 200, 400, 300, Method::Crop), None);
    }
}
