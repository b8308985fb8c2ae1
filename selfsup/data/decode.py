"""Turning one encoded image into a uint8 array, and bringing images to one size."""

from __future__ import annotations

import io

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

# Extension -> PIL format name. Telling PIL the format skips probing every plugin, which is a
# noticeable share of the time for tiny images.
FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF",
    ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM",
    ".pbm": "PPM", ".pnm": "PPM",
}

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_ORIENTATION = 0x0112  # EXIF tag: how the camera was held; 1 is upright


def image_format(name: str) -> str | None:
    """The PIL format for a file name, or None when it is not an image we read."""
    dot = name.rfind(".")
    return FORMATS.get(name[dot:].lower()) if dot >= 0 else None


def to_array(img: Image.Image) -> np.ndarray:
    """uint8 [H, W] for grayscale modes, [H, W, 3] for everything else.

    Alpha is dropped rather than composited, as torchvision's and timm's loaders do, so pixels
    match what other code gets from the same files. 16- and 32-bit grayscale is scaled from the
    0..65535 range that PNG and TIFF use for it.
    """
    mode = img.mode
    if mode in ("L", "RGB"):
        return np.asarray(img)
    if mode in ("1", "LA", "La"):
        return np.asarray(img.convert("L"))
    if mode.startswith("I"):
        a = np.asarray(img).astype(np.float64)
        return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    # RGBA, RGBX, P (palette), CMYK, YCbCr, LAB, HSV, ...
    return np.asarray(img.convert("RGB"))


def resize_crop(a: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size` (bilinear, antialiased), then centre-crop to square."""
    h, w = a.shape[:2]
    if h == size and w == size:
        return a
    if min(h, w) != size:
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        a = np.asarray(Image.fromarray(a).resize((nw, nh), Image.BILINEAR))
        h, w = nh, nw
    top, left = (h - size) // 2, (w - size) // 2
    return a[top : top + size, left : left + size]


def upright(img: Image.Image) -> Image.Image:
    """The image as the camera's EXIF orientation says it is seen (phone photos are stored
    sideways). The tag is only looked up where it can be, which keeps tiny PNGs fast."""
    if "exif" not in img.info and img.format != "TIFF":
        return img
    if img.getexif().get(_ORIENTATION, 1) == 1:
        return img
    return ImageOps.exif_transpose(img)


def _has_exif(data: bytes) -> bool:
    """Whether a JPEG's header segments (those before the scan) hold an EXIF block."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: no header segment follows
            return False
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\0\0":
            return True
        pos += 2 + length
    return False


def _turbo_jpeg(data: bytes) -> np.ndarray | None:
    """A grey or colour JPEG decoded by libjpeg-turbo through simplejpeg, without PIL's
    per-image work around the same library: the same pixels (PIL's defaults are the library's:
    accurate DCT, smooth upsampling), 2x faster at 224 px and 4.7x at 64 px on one core. None
    where PIL decides: EXIF (the orientation), other colour spaces (CMYK, YCCK), and any damage
    the library would otherwise only warn about."""
    if not data.startswith(b"\xff\xd8") or _has_exif(data):
        return None
    try:
        space = simplejpeg.decode_jpeg_header(data)[2]
        if space not in ("Gray", "YCbCr", "RGB"):
            return None
        a = simplejpeg.decode_jpeg(data, colorspace="GRAY" if space == "Gray" else "RGB")
    except ValueError:
        return None
    return a.reshape(a.shape[:2]) if space == "Gray" else a


def decode(data: bytes | str, fmt: str | None, image_size: int | None) -> np.ndarray:
    """Decode file bytes (or a file path) into uint8 [H, W] or [H, W, 3], upright."""
    if fmt == "JPEG" and not isinstance(data, bytes):
        with open(data, "rb") as f:
            data = f.read()
    a = _turbo_jpeg(data) if fmt == "JPEG" else None
    if a is not None:
        return a if image_size is None else resize_crop(a, image_size)
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(src, formats=[fmt] if fmt else None) as img:
        img.load()
        a = to_array(upright(img))
    if image_size is not None:
        a = resize_crop(a, image_size)
    return a


def stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack same-sized decoded images into [N, C, H, W]: one channel if all are grayscale,
    else three (grayscale images repeated)."""
    color = any(a.ndim == 3 for a in arrays)
    h, w = arrays[0].shape[:2]
    out = np.empty((len(arrays), 3 if color else 1, h, w), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if a.ndim == 2:
            out[i] = a[None]
        else:
            out[i] = a.transpose(2, 0, 1)
    return out


def resize_images(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Batch version of resize_crop for uint8 [N, C, H, W] sets that already share one size."""
    n, c, h, w = images.shape
    if h == size and w == size:
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.empty((n, c, size, size), dtype=torch.uint8, device=images.device)
    for s in range(0, n, chunk):
        x = images[s : s + chunk].float()
        if (nh, nw) != (h, w):
            # antialias matches PIL's bilinear when shrinking, so folders and arrays agree.
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        out[s : s + chunk] = x[:, :, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)
    return out
