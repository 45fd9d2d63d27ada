// Image decoding (JPEG with libjpeg-turbo, PNG with libpng) and preprocessing: channel
// conversion, shorter-side resize, centre crop, normalisation.
//
// Both libraries report fatal errors by calling a handler that must not return, so each
// decoder longjmps out of it. To keep that well defined, the function that calls setjmp
// (jpeg_run, png_run) keeps nothing the error path needs in its own locals: what it
// allocates lives in a context struct its caller owns and frees afterwards.
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "alexrt.h"
#include "image.h"
#include "internal.h"

// A progressive JPEG of a few kilobytes can hold thousands of scans, each a full pass
// over the image: a cheap way to make a decoder spin. Real encoders write about 10.
// (libjpeg-turbo's djpeg bounds the same thing with -maxscans.)
#define JPEG_MAX_SCANS 1000

static const uint8_t JPEG_MAGIC[3] = {0xFF, 0xD8, 0xFF};
static const uint8_t PNG_MAGIC[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

// A decoded image: 8-bit, row-major, interleaved channels.
typedef struct {
  int width, height, channels;  // channels: 1 (gray) or 3 (RGB)
  uint8_t *px;                  // owned
} Pixels;

// Refuses an image by its header's size, before any pixel is decoded or allocated.
static bool check_pixels(const char *path, uint64_t w, uint64_t h) {
  if (w == 0 || h == 0)
    return rt_fail("%s: the image is %llux%llu pixels (empty)", path, (unsigned long long)w,
                   (unsigned long long)h);
  if (w * h > RT_IMAGE_MAX_PIXELS)  // w, h < 2^32: the product fits
    return rt_fail("%s: %llux%llu pixels is more than the limit of %llu", path,
                   (unsigned long long)w, (unsigned long long)h,
                   (unsigned long long)RT_IMAGE_MAX_PIXELS);
  return true;
}

static bool alloc_pixels(const char *path, Pixels *img, int w, int h, int channels) {
  img->width = w;
  img->height = h;
  img->channels = channels;
  img->px = malloc((size_t)w * (size_t)h * (size_t)channels);
  return img->px ? true : rt_fail("%s: out of memory for %dx%d pixels", path, w, h);
}

// ---- JPEG

typedef struct {
  struct jpeg_error_mgr pub;  // first: libjpeg hands back a pointer to it
  jmp_buf jump;
  char msg[JMSG_LENGTH_MAX + 64];
  bool truncated;
} JpegErr;

typedef struct {
  struct jpeg_decompress_struct cinfo;
  JpegErr err;
  struct jpeg_progress_mgr progress;
  bool created;
  uint8_t *row;  // one CMYK scanline
} JpegCtx;

static void jpeg_on_error(j_common_ptr cinfo) {
  JpegErr *e = (JpegErr *)cinfo->err;
  cinfo->err->format_message(cinfo, e->msg);
  longjmp(e->jump, 1);
}

// Warnings (level -1). Most leave the pixels intact (extraneous bytes between markers,
// which many cameras write), but after these three libjpeg fills the missing part of
// the image with gray and goes on: a photo that is partly gray is an error here.
static void jpeg_on_message(j_common_ptr cinfo, int level) {
  if (level >= 0)
    return;  // trace messages
  int code = cinfo->err->msg_code;
  if (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER || code == JWRN_MUST_RESYNC) {
    ((JpegErr *)cinfo->err)->truncated = code == JWRN_JPEG_EOF;
    jpeg_on_error(cinfo);
  }
  cinfo->err->num_warnings++;
}

static void jpeg_on_progress(j_common_ptr cinfo) {
  const j_decompress_ptr d = (j_decompress_ptr)cinfo;
  if (d->input_scan_number > JPEG_MAX_SCANS) {
    JpegErr *e = (JpegErr *)cinfo->err;
    snprintf(e->msg, sizeof e->msg, "more than %d progressive scans", JPEG_MAX_SCANS);
    longjmp(e->jump, 1);
  }
}

// CMYK scanline -> RGB. Adobe (Photoshop) JPEGs, the ones that carry an Adobe marker,
// store CMYK inverted (255 = no ink), and libjpeg-turbo hands the samples over as
// stored; YCCK is always Adobe's and arrives as inverted CMYK too. So with the marker
// R = C*K/255, without it R = (255-C)*(255-K)/255 (PIL does the same).
static void cmyk_to_rgb(const uint8_t *src, uint8_t *dst, int w, bool inverted) {
  for (int x = 0; x < w; x++, src += 4, dst += 3) {
    unsigned k = inverted ? src[3] : 255u - src[3];
    for (int c = 0; c < 3; c++) {
      unsigned v = inverted ? src[c] : 255u - src[c];
      dst[c] = (uint8_t)((v * k + 127) / 255);
    }
  }
}

static bool jpeg_run(JpegCtx *j, const char *path, const uint8_t *data, size_t size,
                     Pixels *img) {
  j->cinfo.err = jpeg_std_error(&j->err.pub);
  j->err.pub.error_exit = jpeg_on_error;
  j->err.pub.emit_message = jpeg_on_message;
  if (setjmp(j->err.jump)) {
    if (j->err.truncated)
      return rt_fail("%s: truncated: the file ends in the middle of the JPEG data", path);
    return rt_fail("%s: corrupt JPEG: %s", path, j->err.msg);
  }
  jpeg_create_decompress(&j->cinfo);
  j->created = true;
  j->progress.progress_monitor = jpeg_on_progress;
  j->cinfo.progress = &j->progress;
  jpeg_mem_src(&j->cinfo, data, (unsigned long)size);
  jpeg_read_header(&j->cinfo, TRUE);
  if (!check_pixels(path, j->cinfo.image_width, j->cinfo.image_height))
    return false;
  switch (j->cinfo.jpeg_color_space) {
  case JCS_GRAYSCALE:
    j->cinfo.out_color_space = JCS_GRAYSCALE;
    break;
  case JCS_CMYK:
  case JCS_YCCK:  // libjpeg-turbo converts YCCK to CMYK, not to RGB
    j->cinfo.out_color_space = JCS_CMYK;
    break;
  default:
    j->cinfo.out_color_space = JCS_RGB;
  }
  jpeg_start_decompress(&j->cinfo);
  int w = (int)j->cinfo.output_width, h = (int)j->cinfo.output_height;
  int comps = j->cinfo.output_components;
  if (comps != 1 && comps != 3 && comps != 4)
    return rt_fail("%s: JPEG decodes to %d components (want 1, 3 or 4)", path, comps);
  if (!alloc_pixels(path, img, w, h, comps == 1 ? 1 : 3))
    return false;
  if (comps == 4 && !(j->row = malloc((size_t)w * 4)))
    return rt_fail("%s: out of memory", path);
  while (j->cinfo.output_scanline < j->cinfo.output_height) {
    uint8_t *dst = img->px + (size_t)j->cinfo.output_scanline * (size_t)w * img->channels;
    JSAMPROW row = comps == 4 ? j->row : dst;
    if (jpeg_read_scanlines(&j->cinfo, &row, 1) != 1)  // 0 only if the source suspends
      return rt_fail("%s: truncated: the file ends in the middle of the JPEG data", path);
    if (comps == 4)
      cmyk_to_rgb(j->row, dst, w, j->cinfo.saw_Adobe_marker);
  }
  // Every pixel is in. jpeg_finish_decompress would also demand the EOI marker, which
  // some writers leave off; the caller's jpeg_destroy_decompress cleans up without it.
  return true;
}

static bool decode_jpeg(const char *path, const uint8_t *data, size_t size, Pixels *img) {
  JpegCtx j;
  memset(&j, 0, sizeof j);
  bool ok = jpeg_run(&j, path, data, size, img);
  if (j.created)
    jpeg_destroy_decompress(&j.cinfo);
  free(j.row);
  return ok;
}

// ---- PNG

typedef struct {
  png_structp png;
  png_infop info;
  const uint8_t *data;
  size_t size, pos;
  char msg[256];
  bool truncated;
  png_bytep *rows;
} PngCtx;

static void png_on_error(png_structp png, png_const_charp msg) {
  PngCtx *p = png_get_error_ptr(png);
  snprintf(p->msg, sizeof p->msg, "%s", msg);
  png_longjmp(png, 1);
}

// Warnings are about ancillary chunks (a bad CRC, an odd gamma), which it skips: the
// pixels are intact, so they are not worth a line on stderr.
static void png_on_warning(png_structp png, png_const_charp msg) {
  (void)png;
  (void)msg;
}

static void png_read_mem(png_structp png, png_bytep out, size_t n) {
  PngCtx *p = png_get_io_ptr(png);
  if (n > p->size - p->pos) {
    p->truncated = true;
    png_error(png, "truncated");
  }
  memcpy(out, p->data + p->pos, n);
  p->pos += n;
}

static uint32_t be32(const uint8_t *b) {
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

// The first chunk of a PNG is IHDR, whose first fields are width and height. We read
// them ourselves because png_read_info goes through every chunk before the pixel data
// (text, ICC profiles, ...) first, and a header that claims 100000x100000 pixels
// should be refused before any of that.
static bool png_check_header(const char *path, const uint8_t *data, size_t size) {
  if (size < 8 + 8 + 13 + 4)  // signature, IHDR's length and type, its data, its CRC
    return rt_fail("%s: truncated: the file ends inside the PNG header", path);
  if (memcmp(data + 12, "IHDR", 4) != 0)
    return rt_fail("%s: corrupt PNG: the first chunk is not IHDR", path);
  return check_pixels(path, be32(data + 16), be32(data + 20));
}

static bool png_run(PngCtx *p, const char *path, Pixels *img) {
  p->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, p, png_on_error, png_on_warning);
  if (!p->png || !(p->info = png_create_info_struct(p->png)))
    return rt_fail("%s: out of memory", path);
  if (setjmp(png_jmpbuf(p->png))) {
    if (p->truncated)
      return rt_fail("%s: truncated: the file ends in the middle of the PNG data", path);
    return rt_fail("%s: corrupt PNG: %s", path, p->msg);
  }
  png_set_read_fn(p->png, p, png_read_mem);
  png_read_info(p->png, p->info);
  png_uint_32 w, h;
  int depth, type;
  png_get_IHDR(p->png, p->info, &w, &h, &depth, &type, NULL, NULL, NULL);
  if (!check_pixels(path, w, h))
    return false;
  // Everything to 8-bit gray or RGB with libpng's own transforms. Transparency is
  // ignored: an alpha channel is dropped, and so is the one png_set_palette_to_rgb
  // makes of a tRNS chunk. Gamma is not applied (nor by PIL, through which
  // torchvision's models saw their training images).
  if (type == PNG_COLOR_TYPE_PALETTE)
    png_set_palette_to_rgb(p->png);
  if (type == PNG_COLOR_TYPE_GRAY && depth < 8)
    png_set_expand_gray_1_2_4_to_8(p->png);
  if (depth == 16)
    png_set_scale_16(p->png);  // v * 255 / 65535 rounded; png_set_strip_16 truncates
  if ((type & PNG_COLOR_MASK_ALPHA) || png_get_valid(p->png, p->info, PNG_INFO_tRNS))
    png_set_strip_alpha(p->png);
  png_set_interlace_handling(p->png);
  png_read_update_info(p->png, p->info);
  int channels = png_get_channels(p->png, p->info);
  if ((channels != 1 && channels != 3) || png_get_bit_depth(p->png, p->info) != 8 ||
      png_get_rowbytes(p->png, p->info) != (size_t)w * (size_t)channels)
    return rt_fail("%s: PNG did not convert to 8-bit gray or RGB", path);
  if (!alloc_pixels(path, img, (int)w, (int)h, channels))
    return false;
  if (!(p->rows = malloc(h * sizeof *p->rows)))
    return rt_fail("%s: out of memory", path);
  for (png_uint_32 y = 0; y < h; y++)
    p->rows[y] = img->px + (size_t)y * w * channels;
  png_read_image(p->png, p->rows);
  // As for JPEG, every pixel is in; a missing IEND chunk does not matter.
  return true;
}

static bool decode_png(const char *path, const uint8_t *data, size_t size, Pixels *img) {
  if (!png_check_header(path, data, size))
    return false;
  PngCtx p;
  memset(&p, 0, sizeof p);
  p.data = data;
  p.size = size;
  bool ok = png_run(&p, path, img);
  png_destroy_read_struct(p.png ? &p.png : NULL, p.info ? &p.info : NULL, NULL);
  free(p.rows);
  return ok;
}

// ---- format detection

// True if data starts with magic, or (partial) if all of data is a start of it.
static bool has_magic(const uint8_t *data, size_t size, const uint8_t *magic, size_t n,
                      bool *partial) {
  if (size >= n)
    return memcmp(data, magic, n) == 0;
  if (memcmp(data, magic, size) == 0)
    *partial = true;
  return false;
}

static bool decode(const char *path, const uint8_t *data, size_t size, Pixels *img) {
  if (size == 0)
    return rt_fail("%s: empty file (not a JPEG or PNG image)", path);
  bool partial = false;
  if (has_magic(data, size, JPEG_MAGIC, sizeof JPEG_MAGIC, &partial))
    return decode_jpeg(path, data, size, img);
  if (has_magic(data, size, PNG_MAGIC, sizeof PNG_MAGIC, &partial))
    return decode_png(path, data, size, img);
  if (partial)
    return rt_fail("%s: truncated: %zu bytes, the start of a JPEG or PNG signature", path,
                   size);
  return rt_fail("%s: not a JPEG or PNG file", path);
}

// ---- channels

// To the network's channel count, in place: gray is replicated; RGB becomes ITU-R 601
// luma in 16-bit fixed point (0.299 R + 0.587 G + 0.114 B; the weights sum to 65536),
// the formula PIL's convert("L") uses.
static bool convert_channels(const char *path, Pixels *img, int channels) {
  size_t n = (size_t)img->width * (size_t)img->height;
  uint8_t *px = img->px;
  if (img->channels == 3 && channels == 1) {
    for (size_t i = 0; i < n; i++)  // writes at i, reads at 3i: never overtakes itself
      px[i] = (uint8_t)((px[3 * i] * 19595u + px[3 * i + 1] * 38470u + px[3 * i + 2] * 7471u +
                         0x8000u) >> 16);
  } else if (img->channels == 1 && channels == 3) {
    if (!(px = realloc(px, n * 3)))
      return rt_fail("%s: out of memory", path);
    img->px = px;
    for (size_t i = n; i-- > 0;)  // back to front, so no gray value is overwritten unread
      px[3 * i] = px[3 * i + 1] = px[3 * i + 2] = px[i];
  }
  img->channels = channels;
  return true;
}

// ---- geometry

// torchvision's CenterCrop offset, int(round(excess / 2.0)): Python rounds halves to
// even, so an excess of 33 gives 16 and one of 35 gives 18.
static int centre_offset(int excess) {
  int q = excess / 2;
  return excess % 2 && q % 2 ? q + 1 : q;
}

typedef struct {
  int rw, rh;  // the image after resizing (its size if there is no resize)
  int x0, y0;  // the crop's top-left corner in it
} Geometry;

// The shorter side becomes prep->resize and the longer keeps the aspect ratio,
// truncated as torchvision's Resize(int) truncates it.
static bool plan_geometry(const char *path, const Pixels *img, const RtImagePrep *prep,
                          Geometry *g) {
  int w = img->width, h = img->height;
  int64_t rw = w, rh = h;
  if (prep->resize) {
    if (w <= h) {
      rw = prep->resize;
      rh = (int64_t)prep->resize * h / w;
    } else {
      rh = prep->resize;
      rw = (int64_t)prep->resize * w / h;
    }
    if ((uint64_t)rw * (uint64_t)rh > RT_IMAGE_MAX_PIXELS)
      return rt_fail("%s: %dx%d pixels resized to %lldx%lld is more than the limit of %llu "
                     "pixels", path, w, h, (long long)rw, (long long)rh,
                     (unsigned long long)RT_IMAGE_MAX_PIXELS);
  }
  if (rw < prep->width || rh < prep->height) {
    char resized[96] = "";
    if (prep->resize)
      snprintf(resized, sizeof resized, ", %lldx%lld after resizing its shorter side to %d",
               (long long)rw, (long long)rh, prep->resize);
    return rt_fail("%s: the image (%dx%d pixels%s) is smaller than the %dx%d crop "
                   "(width x height)", path, w, h, resized, prep->width, prep->height);
  }
  g->rw = (int)rw;
  g->rh = (int)rh;
  g->x0 = centre_offset(g->rw - prep->width);
  g->y0 = centre_offset(g->rh - prep->height);
  return true;
}

// ---- resampling

// The filter taps of out_size - long resampling of in_size samples, for the n outputs
// from off on (only the crop is ever computed). The filter is PIL's BILINEAR, which
// torchvision's Resize applies to the PIL images its ImageNet models were trained on:
// a triangle one input pixel wide when enlarging (plain bilinear interpolation), and
// stretched to the output pixel's footprint when shrinking, so that every input pixel
// contributes (area averaging). Plain bilinear would read 4 of the ~200 pixels under
// each output pixel of a 12 MP photo and alias badly.
typedef struct {
  int ksize;    // taps per output, the most any needs
  int *first;   // per output: its first input sample
  int *count;   // per output: its number of taps (<= ksize)
  float *w;     // per output: ksize weights, summing to 1
} Taps;

static void taps_free(Taps *t) {
  free(t->first);
  free(t->count);
  free(t->w);
}

static bool taps_make(const char *path, Taps *t, int in_size, int out_size, int off, int n) {
  double scale = (double)in_size / out_size;
  double fscale = scale > 1 ? scale : 1;  // the triangle's half-width, in input pixels
  t->ksize = (int)ceil(fscale) * 2 + 1;
  t->first = malloc((size_t)n * sizeof *t->first);
  t->count = malloc((size_t)n * sizeof *t->count);
  t->w = calloc((size_t)n * (size_t)t->ksize, sizeof *t->w);
  if (!t->first || !t->count || !t->w)
    return rt_fail("%s: out of memory", path);
  for (int i = 0; i < n; i++) {
    double centre = (off + i + 0.5) * scale;  // in input coordinates: pixel x spans [x, x+1)
    int lo = (int)floor(centre - fscale + 0.5), hi = (int)floor(centre + fscale + 0.5);
    if (lo < 0)
      lo = 0;
    if (hi > in_size)
      hi = in_size;
    if (hi - lo > t->ksize)  // cannot happen (ksize covers 2 * fscale + 1); be safe
      hi = lo + t->ksize;
    float *w = t->w + (size_t)i * t->ksize;
    double sum = 0;
    for (int x = lo; x < hi; x++) {
      double d = fabs((x + 0.5 - centre) / fscale);
      w[x - lo] = d < 1 ? (float)(1 - d) : 0;
      sum += w[x - lo];
    }
    for (int x = lo; x < hi && sum > 0; x++)
      w[x - lo] = (float)(w[x - lo] / sum);
    t->first[i] = lo;
    t->count[i] = hi - lo;
  }
  return true;
}

// Resizes img to g's size, crops, and writes the normalised CHW result to out. The two
// passes are separable: across each needed input row, then down each column. The
// weights are non-negative, so no value leaves 0..255 and there is nothing to clamp.
static bool resample(const char *path, const Pixels *img, const RtImagePrep *prep,
                     const Geometry *g, float *out) {
  const int C = img->channels, H = prep->height, W = prep->width;
  Taps ht = {0}, vt = {0};
  float *tmp = NULL;
  bool ok = taps_make(path, &ht, img->width, g->rw, g->x0, W) &&
            taps_make(path, &vt, img->height, g->rh, g->y0, H);
  // The input rows the crop reads: from the first output row's first tap to the last's.
  int ylo = ok ? vt.first[0] : 0, yhi = ok ? vt.first[H - 1] + vt.count[H - 1] : 0;
  if (ok && !(tmp = malloc((size_t)(yhi - ylo) * W * C * sizeof *tmp)))
    ok = rt_fail("%s: out of memory", path);
  for (int y = ylo; ok && y < yhi; y++) {
    const uint8_t *src = img->px + (size_t)y * img->width * C;
    float *dst = tmp + (size_t)(y - ylo) * W * C;
    for (int x = 0; x < W; x++) {
      const float *k = ht.w + (size_t)x * ht.ksize;
      const uint8_t *s = src + (size_t)ht.first[x] * C;
      for (int c = 0; c < C; c++) {
        float acc = 0;
        for (int j = 0; j < ht.count[x]; j++)
          acc += k[j] * s[j * C + c];
        dst[x * C + c] = acc;
      }
    }
  }
  for (int y = 0; ok && y < H; y++) {
    const float *k = vt.w + (size_t)y * vt.ksize;
    const float *s = tmp + (size_t)(vt.first[y] - ylo) * W * C;
    for (int x = 0; x < W; x++) {
      for (int c = 0; c < C; c++) {
        float acc = 0;
        for (int j = 0; j < vt.count[y]; j++)
          acc += k[j] * s[((size_t)j * W + x) * C + c];
        out[((size_t)c * H + y) * W + x] = (acc * prep->scale - prep->mean[c]) / prep->std[c];
      }
    }
  }
  free(tmp);
  taps_free(&ht);
  taps_free(&vt);
  return ok;
}

// ---- the whole

static bool check_prep(const char *path, const RtImagePrep *p) {
  if (p->channels != 1 && p->channels != 3)
    return rt_fail("%s: the network wants %d channels; images give 1 or 3", path, p->channels);
  if (p->height < 1 || p->width < 1 || p->height > RT_IMAGE_MAX_SIDE ||
      p->width > RT_IMAGE_MAX_SIDE)
    return rt_fail("%s: bad crop size %dx%d (want 1 to %d a side)", path, p->width, p->height,
                   RT_IMAGE_MAX_SIDE);
  if (p->resize < 0 || p->resize > RT_IMAGE_MAX_SIDE)
    return rt_fail("%s: bad resize %d (want 0 to %d)", path, p->resize, RT_IMAGE_MAX_SIDE);
  if (!isfinite(p->scale))
    return rt_fail("%s: bad pixel scale", path);
  for (int c = 0; c < p->channels; c++)
    if (!isfinite(p->mean[c]) || !isfinite(p->std[c]) || p->std[c] == 0)
      return rt_fail("%s: bad mean or std for channel %d (std must be non-zero)", path, c);
  return true;
}

// The result is written to out only once everything has succeeded.
static bool load(const char *path, const RtImagePrep *prep, float *out) {
  if (!check_prep(path, prep))
    return false;
  uint8_t *file;
  size_t size;
  if (!rt_read_file(path, RT_IMAGE_MAX_FILE, &file, &size))
    return false;
  Pixels img = {0};
  Geometry g = {0};
  bool ok = decode(path, file, size, &img);
  free(file);
  ok = ok && convert_channels(path, &img, prep->channels) &&
       plan_geometry(path, &img, prep, &g) && resample(path, &img, prep, &g, out);
  free(img.px);
  return ok;
}

bool rt_image_load(const char *path, const RtImagePrep *prep, float *out, char *err,
                   size_t err_size) {
  bool ok = load(path, prep, out);
  if (err && err_size)
    snprintf(err, err_size, "%s", ok ? "" : rt_error());
  return ok;
}
