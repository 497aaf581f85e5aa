#!/usr/bin/python3
"""Writes the Pillow/torchvision reference that tests/image/image_parity_test.cc checks.

For every file in the shared images folder, and for synthetic variants this script
writes itself (PNG bit depths and color types, interlacing, BMP layouts, GIF palettes and
canvases, JPEG subsampling and EXIF orientations, WebP lossless/alpha/animation), it
records what the reference pipeline gives:

  decoded     Image.open(f).convert("RGB"), H x W x 3 uint8, raw
  alpha       the alpha channel, H x W uint8, raw, for "RGBA" and "LA" images
  cmyk        the CMYK values Pillow holds, H x W x 4 uint8, raw, for "CMYK" images
  resized     torchvision Resize(224, InterpolationMode.BICUBIC) + CenterCrop(224) of
              Image.open(f) in the mode Pillow opened it in, then convert("RGB"), as
              OpenAI's and open_clip's transforms do it (Pillow resizes "P" and "1"
              with NEAREST, "RGBA" and "LA" premultiplied by alpha, "CMYK" before
              converting), 224 x 224 x 3 uint8, raw
  normalized  ToTensor() + Normalize(OpenAI mean, std) of `resized`, 3 x 224 x 224
              float32 little-endian, raw (shared files only)
  transposed  ImageOps.exif_transpose(Image.open(f)).convert("RGB"), when the file has
              an EXIF orientation other than 1
  error       the exception, for files Pillow cannot read

plus manifest.json describing each entry. One deliberate deviation is applied to the
reference: Pillow opens 16-bit grayscale PNGs as mode "I" and convert("RGB") clips them
to 255 (a white image); clipserve scales 16-bit samples to 8 bits (v >> 8), so for those
files the reference is Pillow's pipeline on the v >> 8 image, and the entry says so.

Run with Debian's /usr/bin/python3 (python3-pil 9.4, python3-torchvision 0.14):
  make_image_reference.py --images ../shared/images --out build-img/tests/image/reference
"""

import argparse
import io
import json
import os
import random
import struct
import shutil
import sys
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps
import PIL
import torch
from torchvision import transforms as T

SIZE = 224
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

RESIZE_CROP = T.Compose([
    T.Resize(SIZE, interpolation=T.InterpolationMode.BICUBIC),
    T.CenterCrop(SIZE),
])
TO_FLOATS = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


# --------------------------------------------------------------------------------------
# Writers for variants Pillow cannot produce itself.

def png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def pack_row(samples, bit_depth):
    """Packs a list of sample values (one per channel per pixel) MSB first."""
    if bit_depth == 8:
        return bytes(samples)
    if bit_depth == 16:
        return b"".join(struct.pack(">H", s) for s in samples)
    out = bytearray()
    per_byte = 8 // bit_depth
    for i in range(0, len(samples), per_byte):
        byte = 0
        group = samples[i:i + per_byte]
        for j, s in enumerate(group):
            byte |= s << (8 - bit_depth * (j + 1))
        out.append(byte)
    return bytes(out)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
         (1, 0, 2, 2), (0, 1, 1, 2)]


def write_png(path, samples, bit_depth, color_type, palette=None, trns=None,
              interlace=False, chunks_before_idat=(), chunks_after_idat=(), end=True):
    """samples: H x W x C integer array of sample values."""
    height, width, _ = samples.shape
    raw = bytearray()
    if interlace:
        for x0, y0, dx, dy in ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for row in sub:
                raw += b"\x00" + pack_row([int(v) for v in row.reshape(-1)], bit_depth)
    else:
        for row in samples:
            raw += b"\x00" + pack_row([int(v) for v in row.reshape(-1)], bit_depth)
    data = b"\x89PNG\r\n\x1a\n"
    data += png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth,
                                           color_type, 0, 0, 1 if interlace else 0))
    for kind, payload in chunks_before_idat:
        data += png_chunk(kind, payload)
    if palette is not None:
        data += png_chunk(b"PLTE", bytes(palette))
    if trns is not None:
        data += png_chunk(b"tRNS", trns)
    data += png_chunk(b"IDAT", zlib.compress(bytes(raw), 9))
    for kind, payload in chunks_after_idat:
        data += png_chunk(kind, payload)
    if end:
        data += png_chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def write_bmp(path, width, height, bits, rows, header_size=40, compression=0,
              masks=None, palette=None, palette_entry=4, colors_used=0, top_down=False,
              masks_after_header=False):
    """rows: list of `height` byte strings, top row first, each unpadded."""
    stride = ((width * bits + 31) >> 3) & ~3
    stored = rows if top_down else list(reversed(rows))
    pixel_data = b"".join(r + b"\x00" * (stride - len(r)) for r in stored)
    if header_size == 12:
        header = struct.pack("<IHHHH", 12, width, height, 1, bits)
    else:
        header = struct.pack("<IiiHHIIiiII", header_size, width,
                             -height if top_down else height, 1, bits, compression,
                             len(pixel_data), 2835, 2835, colors_used, 0)
        extra = b""
        if masks is not None and not masks_after_header:
            extra = struct.pack("<IIII", *(list(masks) + [0] * (4 - len(masks))))
        header += extra
        header += b"\x00" * (header_size - len(header))
    after = b""
    if masks is not None and masks_after_header:
        after = struct.pack("<III", *masks[:3])
    pal = b""
    if palette is not None:
        for r, g, b in palette:
            pal += bytes([b, g, r]) + (b"\x00" if palette_entry == 4 else b"")
    offset = 14 + len(header) + len(after) + len(pal)
    file_header = b"BM" + struct.pack("<IHHI", offset + len(pixel_data), 0, 0, offset)
    with open(path, "wb") as f:
        f.write(file_header + header + after + pal + pixel_data)


def gif_blocks(data):
    """Splits a GIF into (header+LSD, global table, rest) and finds the first image
    descriptor's offset within `rest`."""
    flags = data[10]
    gct_size = 3 << ((flags & 7) + 1) if flags & 0x80 else 0
    head, gct, rest = data[:13], data[13:13 + gct_size], data[13 + gct_size:]
    i = 0
    while rest[i] != 0x2C:  # Skip extensions up to the image descriptor.
        assert rest[i] == 0x21, "unexpected GIF block"
        i += 2
        while rest[i]:
            i += rest[i] + 1
        i += 1
    return head, gct, rest, i


def gif_local_palette(data):
    head, gct, rest, i = gif_blocks(data)
    bits = head[10] & 7
    head = head[:10] + bytes([head[10] & 0x78]) + head[11:]  # Drop the global table.
    desc = rest[i:i + 10]
    desc = desc[:9] + bytes([desc[9] | 0x80 | bits])
    return head + rest[:i] + desc + gct + rest[i + 10:]


def gif_bigger_screen(data, pad_w, pad_h, left, top):
    head, gct, rest, i = gif_blocks(data)
    w, h = struct.unpack("<HH", head[6:10])
    head = head[:6] + struct.pack("<HH", w + pad_w, h + pad_h) + head[10:]
    desc = bytearray(rest[i:i + 10])
    desc[1:5] = struct.pack("<HH", left, top)
    return head + gct + rest[:i] + bytes(desc) + rest[i + 10:]


def gif_short_palette(data, entries_bits):
    """Shrinks the global table to 2 ** entries_bits entries."""
    head, gct, rest, i = gif_blocks(data)
    head = head[:10] + bytes([(head[10] & 0xF8) | (entries_bits - 1)]) + head[11:]
    return head + gct[:3 << entries_bits] + rest


# --------------------------------------------------------------------------------------

def photo(images, w, h, x0=100, y0=60):
    """A w x h crop of the cat photo, RGB."""
    with Image.open(os.path.join(images, "chelsea.png")) as im:
        return im.convert("RGB").crop((x0, y0, x0 + w, y0 + h))


def exif_bytes(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def png_exif(orientation):
    """An eXIf chunk: the TIFF structure without JPEG's "Exif\0\0"."""
    return (b"eXIf", exif_bytes(orientation)[6:])


def png_text(key, value, kind=b"tEXt", compressed=False):
    """A tEXt, zTXt or iTXt chunk (iTXt with empty language and translated key)."""
    if kind == b"tEXt":
        return (kind, key + b"\0" + value)
    if kind == b"zTXt":
        return (kind, key + b"\0\0" + zlib.compress(value))
    body = zlib.compress(value) if compressed else value
    return (kind, key + b"\0" + bytes([int(compressed), 0]) + b"\0\0" + body)


def raw_profile(exif):
    """EXIF as ImageMagick stores it in a "Raw profile type exif" text chunk."""
    hexed = exif.hex()
    lines = [hexed[i:i + 72] for i in range(0, len(hexed), 72)]
    return b"\nexif\n%8d\n" % len(exif) + "\n".join(lines).encode() + b"\n"


def xmp(orientation, attribute=False):
    """An XMP packet holding tiff:Orientation as an element or as an attribute."""
    tag = (f'tiff:Orientation="{orientation}"/>' if attribute else
           f"><tiff:Orientation>{orientation}</tiff:Orientation></rdf:Description>")
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf='
            '"http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
            'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" ' + tag +
            "</rdf:RDF></x:xmpmeta>").encode()


def make_synthetic(images, out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(1234)
    made = []

    def path(name):
        made.append(name)
        return os.path.join(out, name)

    cat = photo(images, 97, 61)  # Odd sizes: row padding, odd crops.
    cat_np = np.asarray(cat)
    gray_np = np.asarray(cat.convert("L"))
    h, w = gray_np.shape

    # PNG: every bit depth and color type, Adam7, tRNS, short palettes.
    for bits in (1, 2, 4, 8):
        write_png(path(f"png_gray{bits}.png"), (gray_np >> (8 - bits))[:, :, None], bits, 0)
    gray16 = gray_np.astype(np.uint16) * 257 + rng.integers(0, 257, gray_np.shape)
    write_png(path("png_gray16.png"), gray16[:, :, None], 16, 0)
    write_png(path("png_gray8_trns.png"), gray_np[:, :, None], 8, 0, trns=b"\x00\x80")
    write_png(path("png_rgb8_trns.png"), cat_np, 8, 2, trns=b"\x00\x10\x00\x20\x00\x30")
    rgb16 = cat_np.astype(np.uint16) * 257 + rng.integers(0, 257, cat_np.shape)
    write_png(path("png_rgb16.png"), rgb16, 16, 2)
    alpha = rng.integers(0, 256, (h, w, 1))
    write_png(path("png_rgba8.png"), np.concatenate([cat_np, alpha], 2), 8, 6)
    write_png(path("png_rgba16.png"),
              np.concatenate([rgb16, rng.integers(0, 65536, (h, w, 1))], 2), 16, 6)
    write_png(path("png_la8.png"), np.concatenate([gray_np[:, :, None], alpha], 2), 8, 4)
    # A cut-out on a transparent background that hides white, as many logos are saved:
    # premultiplied resizing turns the background black.
    cutout = np.full((h, w, 1), 255, np.uint8)
    cutout[:8], cutout[-8:], cutout[:, :8], cutout[:, -8:] = 0, 0, 0, 0
    hidden_white = cat_np.copy()
    hidden_white[cutout[:, :, 0] == 0] = 255
    write_png(path("png_rgba8_cutout.png"), np.concatenate([hidden_white, cutout], 2), 8, 6)
    write_png(path("png_la16.png"),
              np.concatenate([gray16[:, :, None], rng.integers(0, 65536, (h, w, 1))], 2),
              16, 4)
    quantized = cat.quantize(colors=200)
    pal = quantized.getpalette()[:200 * 3]
    idx = np.asarray(quantized)
    write_png(path("png_palette8.png"), idx[:, :, None], 8, 3, palette=pal)
    write_png(path("png_palette8_trns.png"), idx[:, :, None], 8, 3, palette=pal,
              trns=bytes(range(0, 200, 2)))
    for bits in (1, 2, 4):
        n = 1 << bits
        small = cat.quantize(colors=n)
        write_png(path(f"png_palette{bits}.png"), np.asarray(small)[:, :, None], bits, 3,
                  palette=small.getpalette()[:n * 3])
    # Indices past the end of a 10-entry palette.
    write_png(path("png_palette_short.png"), (idx % 40)[:, :, None], 8, 3, palette=pal[:30])
    write_png(path("png_rgb8_adam7.png"), cat_np, 8, 2, interlace=True)
    write_png(path("png_palette4_adam7.png"),
              np.asarray(cat.quantize(colors=16))[:, :, None], 4, 3, interlace=True,
              palette=cat.quantize(colors=16).getpalette()[:48])
    write_png(path("png_gray16_adam7.png"), gray16[:, :, None], 16, 0, interlace=True)
    write_png(path("png_no_iend.png"), cat_np, 8, 2, end=False)
    write_png(path("png_exif_rot8.png"), cat_np, 8, 2, chunks_before_idat=[png_exif(8)])
    # Where Pillow 9.4 finds a PNG's orientation: the last "exif" before the image data,
    # else the last anywhere (getexif() then loads the image), else the hex "Raw profile
    # type exif" text, and the XMP packet's tiff:Orientation where the EXIF has no tag.
    raw = b"XML:com.adobe.xmp", b"Raw profile type exif"
    without_tag = Image.Exif()
    without_tag[0x010F] = "clipserve"
    png_meta = {
        "twice": ([png_exif(6), png_exif(8)], []),
        "after_idat": ([], [png_exif(3)]),
        "before_beats_after": ([png_exif(6)], [png_exif(8)]),
        "marker_twice": ([(b"eXIf", exif_bytes(6))], []),  # Pillow cannot read it.
        "text_key": ([png_text(b"exif", exif_bytes(2))], []),
        "raw_profile_ztxt": ([png_text(raw[1], raw_profile(exif_bytes(6)), b"zTXt")], []),
        "raw_profile_after_idat": ([], [png_text(raw[1], raw_profile(exif_bytes(5)))]),
        "raw_profile_bad_hex": ([png_text(raw[1], b"\nexif\n 2\n45zz\n"),
                                 png_text(raw[0], xmp(6), b"iTXt")], []),
        "xmp_element": ([png_text(raw[0], xmp(8), b"iTXt")], []),
        "xmp_attribute_compressed": (
            [png_text(raw[0], xmp(7, True), b"iTXt", compressed=True)], []),
        "xmp_after_idat": ([], [png_text(raw[0], xmp(3), b"zTXt")]),
        "xmp_not_utf8": ([png_text(raw[0], xmp(3) + b"\xff", b"iTXt")], []),
        "xmp_under_exif_without_tag": (
            [(b"eXIf", without_tag.tobytes()[6:]), png_text(raw[0], xmp(4))], []),
        "xmp_under_exif_tag_1": ([png_exif(1), png_text(raw[0], xmp(6), b"iTXt")], []),
        "xmp_after_idat_exif_before": (
            [(b"eXIf", without_tag.tobytes()[6:])], [png_text(raw[0], xmp(3))]),
    }
    for case, (before, after) in png_meta.items():
        write_png(path(f"png_orientation_{case}.png"), cat_np, 8, 2,
                  chunks_before_idat=before, chunks_after_idat=after)
    # Chunks libpng skips and Pillow's PngStream reads, before the image data or after:
    # the files it refuses for them (x_), and some it reads though they look wrong.
    big = zlib.compress(b"a" * ((1 << 20) + 1))
    png_chunks = {
        "x_ztxt_method1": [(b"zTXt", b"k\0\x01xx")],
        "x_ztxt_over_1mib": [(b"zTXt", b"k\0\0" + big)],
        "x_itxt_over_1mib": [(b"iTXt", b"k\0\x01\0\0\0" + big)],
        "x_iccp_over_1mib": [(b"iCCP", b"icc\0\0" + big)],
        "x_iccp_no_name_end": [(b"iCCP", b"icc-and-no-nul")],
        "x_phys_short": [(b"pHYs", b"\0\0\0\1")],
        "x_srgb_empty": [(b"sRGB", b"")],
        "ztxt_corrupt": [(b"zTXt", b"k\0\0not zlib")],
        "ztxt_empty_key_1mib": [(b"zTXt", b"\0\0" + zlib.compress(b"a" * (1 << 20)))],
        "iccp_method1_read_at_nul": [(b"iCCP", b"icc\0\x01xx")],
        "itxt_method1": [(b"iTXt", b"k\0\x01\x01\0\0" + big)],
        "text_2mib": [(b"tEXt", b"k\0" + b"a" * (2 << 20))],
    }
    for case, chunks in png_chunks.items():
        for where in ("before", "after"):
            placed = {"chunks_before_idat" if where == "before" else "chunks_after_idat":
                      chunks}
            write_png(path(f"png_chunk_{case}_{where}_idat.png"), cat_np, 8, 2, **placed)
    with open(path("png_exif_rot8.png"), "rb") as f:
        whole = f.read()
    # A tEXt chunk the file cuts short, after the image data (IEND dropped).
    with open(path("png_chunk_x_cut_text_after_idat.png"), "wb") as f:
        f.write(whole[:-12] + struct.pack(">I", 100) + b"tEXtk\0cut")
    # A CRC that does not match, after the image data: not checked.
    with open(path("png_chunk_bad_crc_after_idat.png"), "wb") as f:
        f.write(whole[:-12] + png_chunk(b"tEXt", b"k\0v")[:-1] + b"\0" + whole[-12:])
    write_png(path("png_1x1_palette.png"), np.zeros((1, 1, 1), np.uint8), 1, 3,
              palette=[200, 100, 50])
    with open(os.path.join(images, "chelsea.png"), "rb") as f:
        data = f.read()
    with open(path("png_truncated.png"), "wb") as f:
        f.write(data[:len(data) // 2])

    # BMP: depths, compressions, header versions, row orders.
    rgb_rows = [bytes(r[:, ::-1].reshape(-1)) for r in cat_np]  # BGR
    write_bmp(path("bmp_24_bottom_up.bmp"), w, h, 24, rgb_rows)
    write_bmp(path("bmp_24_top_down.bmp"), w, h, 24, rgb_rows, top_down=True)
    write_bmp(path("bmp_24_os2.bmp"), w, h, 24, rgb_rows, header_size=12)
    junk = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
    bgrx = [bytes(np.concatenate([r[:, ::-1], j], 1).reshape(-1))
            for r, j in zip(cat_np, junk)]
    write_bmp(path("bmp_32_bgrx.bmp"), w, h, 32, bgrx)
    write_bmp(path("bmp_32_bitfields_v3.bmp"), w, h, 32, bgrx, compression=3,
              masks=(0xFF0000, 0xFF00, 0xFF), masks_after_header=True)
    write_bmp(path("bmp_32_bitfields_v5_alpha.bmp"), w, h, 32, bgrx, header_size=124,
              compression=3, masks=(0xFF0000, 0xFF00, 0xFF, 0xFF000000), top_down=True)
    xbgr = [bytes(np.concatenate([j, r], 1).reshape(-1)) for r, j in zip(cat_np, junk)]
    write_bmp(path("bmp_32_bitfields_xbgr.bmp"), w, h, 32, xbgr, header_size=108,
              compression=3, masks=(0xFF000000, 0xFF0000, 0xFF00, 0))
    c = cat_np.astype(np.uint32)
    p555 = ((c[:, :, 0] >> 3) << 10) | ((c[:, :, 1] >> 3) << 5) | (c[:, :, 2] >> 3)
    p565 = ((c[:, :, 0] >> 3) << 11) | ((c[:, :, 1] >> 2) << 5) | (c[:, :, 2] >> 3)
    write_bmp(path("bmp_16_555.bmp"), w, h, 16, [r.astype("<u2").tobytes() for r in p555])
    write_bmp(path("bmp_16_565_bitfields.bmp"), w, h, 16,
              [r.astype("<u2").tobytes() for r in p565], compression=3,
              masks=(0xF800, 0x7E0, 0x1F), masks_after_header=True, top_down=True)
    pal_rgb = [tuple(pal[i * 3:i * 3 + 3]) for i in range(200)]
    write_bmp(path("bmp_8_palette.bmp"), w, h, 8, [bytes(r) for r in idx],
              palette=pal_rgb, colors_used=200)
    write_bmp(path("bmp_8_palette_short.bmp"), w, h, 8, [bytes(r) for r in (idx % 40)],
              palette=pal_rgb[:10], colors_used=10)
    write_bmp(path("bmp_8_os2.bmp"), w, h, 8, [bytes(r) for r in idx],
              palette=pal_rgb + [(0, 0, 0)] * 56, palette_entry=3, header_size=12)
    q16 = cat.quantize(colors=16)
    i16 = np.asarray(q16)
    write_bmp(path("bmp_4_palette.bmp"), w, h, 4,
              [pack_row([int(v) for v in r], 4) for r in i16],
              palette=[tuple(q16.getpalette()[i * 3:i * 3 + 3]) for i in range(16)])
    write_bmp(path("bmp_1_palette.bmp"), w, h, 1,
              [pack_row([int(v) for v in r], 1) for r in (gray_np > 100)],
              palette=[(20, 40, 60), (250, 200, 150)])
    cat.convert("1").save(path("bmp_1_bw_pillow.bmp"))
    cat.convert("P").save(path("bmp_8_pillow.bmp"))
    cat.convert("L").save(path("bmp_8_gray_pillow.bmp"))  # A gray ramp palette: "L".
    with open(os.path.join(out, "bmp_24_bottom_up.bmp"), "rb") as f:
        data = f.read()
    with open(path("bmp_truncated.bmp"), "wb") as f:
        f.write(data[:len(data) - 100])

    # GIF: Pillow's own writer, then patched palettes and canvases.
    gif_src = photo(images, 90, 70).quantize(colors=64)

    def gif_bytes(**kwargs):
        buf = io.BytesIO()
        gif_src.save(buf, "GIF", **kwargs)
        return buf.getvalue()

    for name, data in [
        ("gif_interlaced.gif", gif_bytes()),
        ("gif_progressive_off.gif", gif_bytes(interlace=False)),
        ("gif_transparent.gif", gif_bytes(transparency=5)),
        ("gif_local_palette.gif", gif_local_palette(gif_bytes())),
        ("gif_offset_frame.gif", gif_bigger_screen(gif_bytes(), 13, 9, 5, 4)),
        ("gif_offset_frame_transparent.gif",
         gif_bigger_screen(gif_bytes(transparency=7), 13, 9, 8, 2)),
        ("gif_short_palette.gif", gif_short_palette(gif_bytes(), 3)),
        ("gif_truncated.gif", gif_bytes()[:1500]),
        # Every pixel there, then the file ends: without the trailer, and without the
        # frame's block terminator too (Pillow stops reading at the last pixel).
        ("gif_no_trailer.gif", gif_bytes(interlace=False)[:-1]),
        ("gif_no_block_terminator.gif", gif_bytes(interlace=False)[:-2]),
    ]:
        with open(path(name), "wb") as f:
            f.write(data)
    frames = [photo(images, 90, 70, 100 + 30 * i, 60) for i in range(3)]
    frames[0].save(path("gif_animated.gif"), save_all=True, append_images=frames[1:],
                   duration=100, loop=0)
    cat.convert("L").save(path("gif_gray.gif"))
    # Every gray level, so Pillow writes the full ramp palette and reads it back as "L".
    ramp = (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)
    Image.fromarray(ramp, "L").save(path("gif_gray_ramp.gif"), optimize=False)

    # JPEG: gray, chroma subsampling, progressive, CMYK, EXIF orientations, damage.
    cat.convert("L").save(path("jpeg_gray.jpg"), quality=90)
    for s, tag in ((0, "444"), (1, "422"), (2, "420")):
        cat.save(path(f"jpeg_{tag}.jpg"), quality=85, subsampling=s)
    cat.save(path("jpeg_progressive_420.jpg"), quality=80, progressive=True)
    cat.convert("CMYK").save(path("jpeg_cmyk.jpg"), quality=90)
    oriented = photo(images, 40, 24)
    for o in range(1, 9):
        oriented.save(path(f"jpeg_exif_orientation{o}.jpg"), quality=95, exif=exif_bytes(o))
    buf = io.BytesIO()
    cat.save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    with open(path("jpeg_no_eoi.jpg"), "wb") as f:
        f.write(data[:-2])
    with open(path("jpeg_trailing_garbage.jpg"), "wb") as f:
        f.write(data + b"garbage after EOI")
    with open(path("jpeg_truncated_scan.jpg"), "wb") as f:
        f.write(data[:len(data) * 2 // 3])
    # Two bytes of the last rows' entropy data turned into a marker whose length runs
    # past the end of the file: libjpeg ends the scan there (filling the rest of it)
    # and meets the end of the file only once every row is out. Pillow keeps the image.
    damaged = bytearray(data)
    damaged[len(data) - 40:len(data) - 36] = b"\xff\xe8\x45\x79"
    with open(path("jpeg_marker_past_the_end.jpg"), "wb") as f:
        f.write(bytes(damaged))
    # A first APP1 segment starting "Exif\0" but not "Exif\0\0": Pillow takes it as the
    # EXIF (finding no orientation in it) and never reads the good one after it.
    buf = io.BytesIO()
    oriented.save(buf, "JPEG", quality=95, exif=exif_bytes(6))
    upright = buf.getvalue()
    bad_exif = b"Exif\0X" + exif_bytes(6)[6:]
    with open(path("jpeg_exif_first_segment_malformed.jpg"), "wb") as f:
        f.write(upright[:2] + b"\xff\xe1" + struct.pack(">H", len(bad_exif) + 2) + bad_exif
                + upright[2:])

    # WebP: lossless, alpha, animation, EXIF.
    rgba = Image.fromarray(np.concatenate([cat_np, alpha.astype(np.uint8)], 2), "RGBA")
    cat.save(path("webp_lossless.webp"), lossless=True)
    rgba.save(path("webp_lossless_alpha.webp"), lossless=True, exact=True)
    rgba.save(path("webp_lossy_alpha.webp"), quality=80)
    cat.save(path("webp_lossy_exif_rot3.webp"), quality=80, exif=exif_bytes(3))
    # An EXIF chunk after the image of a simple (no VP8X header) WebP: libwebp's
    # demuxer, through which Pillow reads chunks, skips it, so the image stays as it is.
    buf = io.BytesIO()
    cat.save(buf, "WEBP", quality=80)
    simple = buf.getvalue()
    assert simple[12:16] == b"VP8 "
    exif = exif_bytes(6)
    simple += b"EXIF" + struct.pack("<I", len(exif)) + exif + b"\0" * (len(exif) % 2)
    with open(path("webp_simple_trailing_exif.webp"), "wb") as f:
        f.write(simple[:4] + struct.pack("<I", len(simple) - 8) + simple[8:])
    frames[0].save(path("webp_animated.webp"), save_all=True, append_images=frames[1:],
                   duration=100, loop=0, quality=80)
    buf = io.BytesIO()
    cat.save(buf, "WEBP", quality=80)
    with open(path("webp_truncated.webp"), "wb") as f:
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
    return made


# --------------------------------------------------------------------------------------

def write_raw(out, relative, array):
    full = os.path.join(out, relative)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    np.ascontiguousarray(array).tofile(full)
    return relative


def reference(file_path, name, source, out, with_floats):
    entry = {"name": name, "file": os.path.abspath(file_path), "source": source}
    try:
        with Image.open(file_path) as im:
            im.load()
            entry["pillow_format"] = im.format
            entry["pillow_mode"] = im.mode
            if im.mode == "I" and im.format == "PNG":
                # The deliberate deviation: 16-bit gray scaled to 8 bits, not clipped.
                plain = np.asarray(im.convert("RGB"))
                entry["deviation"] = ("16-bit grayscale: clipserve scales samples to 8 "
                                      "bits (v >> 8); Pillow's convert('RGB') clips them "
                                      "to 255")
                entry["pillow_plain_min_value"] = int(plain.min())
                scaled = (np.asarray(im, dtype=np.int64) >> 8).astype(np.uint8)
                opened = Image.fromarray(scaled, "L")
                rgb = opened.convert("RGB")
            else:
                opened = im
                rgb = im.convert("RGB")
            if im.mode in ("RGBA", "LA"):
                entry["alpha"] = write_raw(out, f"alpha/{name}.a",
                                           np.asarray(im.getchannel("A")))
            if im.mode == "CMYK":
                entry["cmyk"] = write_raw(out, f"cmyk/{name}.cmyk", np.asarray(im))
            resized = np.asarray(RESIZE_CROP(opened).convert("RGB"))
            # As users call it, ImageOps.exif_transpose(Image.open(f)): getexif() runs
            # before the image is loaded, which decides which PNG chunks count.
            with Image.open(file_path) as fresh:
                try:
                    orientation = fresh.getexif().get(0x0112)
                except Exception:  # Malformed EXIF: no orientation, as in clipserve.
                    orientation = None
                if im.format in ("JPEG", "PNG", "WEBP") and orientation not in (None, 1):
                    upright = ImageOps.exif_transpose(fresh).convert("RGB")
            if im.format in ("JPEG", "PNG", "WEBP") and orientation not in (None, 1):
                entry["exif_orientation"] = int(orientation)
                entry["transposed"] = write_raw(out, f"transposed/{name}.rgb",
                                                np.asarray(upright))
                entry["transposed_width"], entry["transposed_height"] = upright.size
    except Exception as e:  # Pillow's verdict on a broken file is the reference.
        entry["ok"] = False
        entry["error"] = f"{type(e).__name__}: {e}"
        return entry
    entry["ok"] = True
    entry["width"], entry["height"] = rgb.size
    entry["decoded"] = write_raw(out, f"decoded/{name}.rgb", np.asarray(rgb))
    entry["resized"] = write_raw(out, f"resized/{name}.rgb", resized)
    if with_floats:
        floats = TO_FLOATS(Image.fromarray(resized, "RGB")).numpy().astype("<f4")
        entry["normalized"] = write_raw(out, f"normalized/{name}.f32", floats)
    return entry


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", help="the shared images folder "
                        "(default: $CLIPSERVE_SHARED_DIR/images)")
    parser.add_argument("--out", required=True, help="output folder (recreated)")
    args = parser.parse_args()
    images = args.images
    if os.environ.get("CLIPSERVE_SHARED_DIR"):
        images = os.path.join(os.environ["CLIPSERVE_SHARED_DIR"], "images")
    if not images or not os.path.isdir(images):
        sys.exit(f"shared images folder not found: {images!r}")
    random.seed(0)
    torch.manual_seed(0)
    # Pillow warns about palette transparency given as bytes; convert("RGB") is meant.
    warnings.simplefilter("ignore")

    out = os.path.abspath(args.out)
    tmp = out + ".tmp"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    entries = []
    for name in sorted(os.listdir(images)):
        entries.append(reference(os.path.join(images, name), name, "shared", tmp, True))
    for name in make_synthetic(images, os.path.join(tmp, "synthetic")):
        entries.append(reference(os.path.join(tmp, "synthetic", name), name, "synthetic",
                                 tmp, False))
    manifest = {
        "pillow": PIL.__version__,
        "torchvision": __import__("torchvision").__version__,
        "size": SIZE,
        "images_dir": os.path.abspath(images),
        "entries": entries,
    }
    # Synthetic files live in the output folder; fix their paths after the move below.
    for e in entries:
        if e["source"] == "synthetic":
            e["file"] = os.path.join(out, "synthetic", e["name"])
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    # Replace the previous reference in one step, so a reader never sees half of one.
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.rename(tmp, out)
    ok = sum(e["ok"] for e in entries)
    print(f"{len(entries)} images ({ok} decodable) -> {out}")


if __name__ == "__main__":
    main()
