// runtime/image.c: photos decoded and preprocessed into network input. The test writes
// its own images with libjpeg and libpng (every colour type the loader converts),
// checks pixel values, orientation (rows not swapped with columns, RGB in order) and
// the resize/crop geometry, and checks that every bad file is refused with a message
// naming it and with the output left untouched.
//
// The fixtures tests/data/cat.jpg and tests/data/cat.png (a 64x48 cartoon cat: flat
// shapes on a sky and grass background, drawn by make_cat below; JPEG at quality 90)
// were written by this program:
//
//   build/tests/test_image --write-fixtures tests/data
//
// and the test checks that the committed files still decode to that drawing.
#include <stdio.h>  // before jpeglib.h, which uses FILE and size_t without including them
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>

#include "alexrt.h"
#include "image.h"
#include "test.h"

static char dir[] = "/tmp/alexc-test-image-XXXXXX";

static char *path(const char *name) {
  static char buf[256];
  snprintf(buf, sizeof buf, "%s/%s", dir, name);
  return buf;
}

static void write_bytes(const char *p, const void *data, size_t n) {
  FILE *f = fopen(p, "wb");
  fwrite(data, 1, n, f);
  fclose(f);
}

// ---- writing test images

// A baseline JPEG. Chroma is not subsampled, so that a solid colour decodes exactly
// enough to check. `space` is the colour space stored (JCS_YCbCr, JCS_GRAYSCALE,
// JCS_CMYK or JCS_YCCK); in_space the one px is in (4 components for CMYK input).
static bool jpeg_progressive;  // write the next JPEGs progressive

static void write_jpeg(const char *p, int w, int h, J_COLOR_SPACE in_space, int comps,
                       J_COLOR_SPACE space, const uint8_t *px, int quality) {
  struct jpeg_compress_struct c;
  struct jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  FILE *f = fopen(p, "wb");
  jpeg_stdio_dest(&c, f);
  c.image_width = (JDIMENSION)w;
  c.image_height = (JDIMENSION)h;
  c.input_components = comps;
  c.in_color_space = in_space;
  jpeg_set_defaults(&c);
  jpeg_set_colorspace(&c, space);  // CMYK and YCCK get an Adobe marker
  for (int i = 0; i < c.num_components; i++)
    c.comp_info[i].h_samp_factor = c.comp_info[i].v_samp_factor = 1;
  jpeg_set_quality(&c, quality, TRUE);
  if (jpeg_progressive)
    jpeg_simple_progression(&c);
  jpeg_start_compress(&c, TRUE);
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = (JSAMPROW)(px + (size_t)c.next_scanline * w * comps);
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  fclose(f);
}

typedef struct {
  int type, depth;           // PNG_COLOR_TYPE_*, bits per sample
  const png_color *palette;  // for PNG_COLOR_TYPE_PALETTE
  int npalette;
  const png_byte *trns;  // palette alpha, if any
  int ntrns;
  bool header_only;  // write the signature and IHDR, nothing else
  bool interlaced;   // Adam7
} PngOpts;

// px holds whole rows as png_write_row takes them (packed, 16-bit big-endian).
static void write_png(const char *p, int w, int h, const PngOpts *o, const uint8_t *px,
                      size_t rowbytes) {
  FILE *f = fopen(p, "wb");
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    fprintf(stderr, "libpng failed writing %s\n", p);
    exit(1);
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, o->depth, o->type,
               o->interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (o->palette)
    png_set_PLTE(png, info, o->palette, o->npalette);
  if (o->trns)
    png_set_tRNS(png, info, o->trns, o->ntrns, NULL);
  png_write_info(png, info);
  if (!o->header_only) {
    for (int pass = png_set_interlace_handling(png); pass > 0; pass--)
      for (int y = 0; y < h; y++)
        png_write_row(png, px + (size_t)y * rowbytes);
    png_write_end(png, NULL);
  }
  png_destroy_write_struct(&png, &info);
  fclose(f);
}

static void write_png_rgb(const char *p, int w, int h, const uint8_t *px) {
  PngOpts o = {.type = PNG_COLOR_TYPE_RGB, .depth = 8};
  write_png(p, w, h, &o, px, (size_t)w * 3);
}

// ---- loading

// Crop h x w, no resize, values left as 0..255.
static RtImagePrep raw(int channels, int h, int w, int resize) {
  RtImagePrep p = {channels, h, w, 1, {0, 0, 0}, {1, 1, 1}, resize};
  return p;
}

static bool load(const char *name, RtImagePrep p, float *out) {
  char err[512] = "x";
  bool ok = rt_image_load(path(name), &p, out, err, sizeof err);
  if (!ok)
    fprintf(stderr, "  %s\n", err);
  else
    CHECK(err[0] == 0);
  return ok;
}

static float at(const float *out, const RtImagePrep *p, int c, int y, int x) {
  return out[((size_t)c * p->height + y) * p->width + x];
}

// Every value of a channels x h x w result within tol of rgb (gray: rgb[0]).
static void check_solid(const float *out, RtImagePrep p, const float *rgb, double tol) {
  for (int c = 0; c < p.channels; c++)
    for (int y = 0; y < p.height; y++)
      for (int x = 0; x < p.width; x++)
        CHECK_NEAR(at(out, &p, c, y, x), rgb[c], tol);
}

static void fill(uint8_t *px, size_t npix, int comps, const uint8_t *v) {
  for (size_t i = 0; i < npix; i++)
    memcpy(px + i * comps, v, (size_t)comps);
}

// ---- JPEG

static void test_jpeg(void) {
  uint8_t px[32 * 24 * 4];
  float out[3 * 16 * 16];

  // RGB, with the ImageNet normalisation.
  fill(px, 32 * 24, 3, (const uint8_t[]){200, 100, 50});
  write_jpeg(path("rgb.jpg"), 32, 24, JCS_RGB, 3, JCS_YCbCr, px, 100);
  RtImagePrep p = {3, 16, 16, 1.0f / 255, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}, 0};
  CHECK(load("rgb.jpg", p, out));
  float want[3] = {(200 / 255.f - 0.485f) / 0.229f, (100 / 255.f - 0.456f) / 0.224f,
                   (50 / 255.f - 0.406f) / 0.225f};
  check_solid(out, p, want, 2.0 / 255 / 0.224);
  // The same photo for a gray network: ITU-R 601 luma.
  CHECK(load("rgb.jpg", raw(1, 16, 16, 0), out));
  check_solid(out, raw(1, 16, 16, 0), (float[]){0.299f * 200 + 0.587f * 100 + 0.114f * 50}, 2);
  // Progressive: the same pixels.
  jpeg_progressive = true;
  write_jpeg(path("prog.jpg"), 32, 24, JCS_RGB, 3, JCS_YCbCr, px, 100);
  jpeg_progressive = false;
  CHECK(load("prog.jpg", p, out));
  check_solid(out, p, want, 2.0 / 255 / 0.224);

  // Grayscale, replicated for an RGB network.
  memset(px, 128, 20 * 20);
  write_jpeg(path("gray.jpg"), 20, 20, JCS_GRAYSCALE, 1, JCS_GRAYSCALE, px, 100);
  CHECK(load("gray.jpg", raw(3, 16, 16, 0), out));
  check_solid(out, raw(3, 16, 16, 0), (float[]){128, 128, 128}, 1);
  CHECK(load("gray.jpg", raw(1, 16, 16, 0), out));
  check_solid(out, raw(1, 16, 16, 0), (float[]){128}, 1);

  // Adobe's inverted CMYK (255 = no ink), as Photoshop writes it; libjpeg adds the
  // Adobe marker. R = C*K/255: (255, 128, 0, 200) is (200, 100, 0).
  fill(px, 32 * 24, 4, (const uint8_t[]){255, 128, 0, 200});
  write_jpeg(path("cmyk.jpg"), 32, 24, JCS_CMYK, 4, JCS_CMYK, px, 100);
  CHECK(load("cmyk.jpg", raw(3, 16, 16, 0), out));
  check_solid(out, raw(3, 16, 16, 0), (float[]){200, 100, 0}, 2);
  // The same stored as YCCK, which libjpeg-turbo turns back into (inverted) CMYK.
  write_jpeg(path("ycck.jpg"), 32, 24, JCS_CMYK, 4, JCS_YCCK, px, 100);
  CHECK(load("ycck.jpg", raw(3, 16, 16, 0), out));
  check_solid(out, raw(3, 16, 16, 0), (float[]){200, 100, 0}, 3);
}

// ---- PNG

// R grows along x, G along y, B is constant: a swapped axis or channel shows.
static void gradient(uint8_t *px, int w, int h) {
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      uint8_t *q = px + ((size_t)y * w + x) * 3;
      q[0] = (uint8_t)(8 * x);
      q[1] = (uint8_t)(10 * y);
      q[2] = 77;
    }
}

static void test_png_rgb(void) {
  uint8_t px[32 * 24 * 3];
  float out[3 * 16 * 16];
  gradient(px, 32, 24);
  write_png_rgb(path("grad.png"), 32, 24, px);
  RtImagePrep p = raw(3, 16, 16, 0);
  CHECK(load("grad.png", p, out));
  // The centre crop of 32x24 to 16x16 starts at column 8, row 4.
  int bad = 0;
  for (int y = 0; y < 16; y++)
    for (int x = 0; x < 16; x++)
      bad += at(out, &p, 0, y, x) != 8 * (x + 8) || at(out, &p, 1, y, x) != 10 * (y + 4) ||
             at(out, &p, 2, y, x) != 77;
  CHECK(bad == 0);
  CHECK(at(out, &p, 0, 0, 15) == 184 && at(out, &p, 1, 15, 0) == 190);

  // The same, interlaced (Adam7).
  PngOpts adam7 = {.type = PNG_COLOR_TYPE_RGB, .depth = 8, .interlaced = true};
  write_png(path("grad7.png"), 32, 24, &adam7, px, 32 * 3);
  float out7[3 * 16 * 16];
  CHECK(load("grad7.png", p, out7) && !memcmp(out, out7, sizeof out));

  // Gray from RGB: PIL's fixed-point luma, exactly.
  RtImagePrep g = raw(1, 16, 16, 0);
  CHECK(load("grad.png", g, out));
  int r = 8 * 13, gr = 10 * 9, b = 77;  // out (y 5, x 5) is pixel (row 9, column 13)
  CHECK(at(out, &g, 0, 5, 5) == (float)((r * 19595 + gr * 38470 + b * 7471 + 0x8000) >> 16));

  // A scale, mean and std per channel.
  RtImagePrep n = {3, 16, 16, 0.5f, {1, 2, 3}, {2, 4, 8}, 0};
  CHECK(load("grad.png", n, out));
  CHECK_NEAR(at(out, &n, 0, 0, 0), (64 * 0.5 - 1) / 2, 1e-6);
  CHECK_NEAR(at(out, &n, 1, 0, 0), (40 * 0.5 - 2) / 4, 1e-6);
  CHECK_NEAR(at(out, &n, 2, 0, 0), (77 * 0.5 - 3) / 8, 1e-6);
}

static void test_png_kinds(void) {
  enum { W = 20, H = 10 };
  uint8_t px[W * H * 8];
  float out[3 * H * H];
  RtImagePrep p = raw(3, H, H, 0);

  // RGBA: alpha ignored, whatever it is.
  for (int i = 0; i < W * H; i++)
    memcpy(px + i * 4, (const uint8_t[]){10, 20, 30, (uint8_t)(i * 7)}, 4);
  PngOpts rgba = {.type = PNG_COLOR_TYPE_RGBA, .depth = 8};
  write_png(path("rgba.png"), W, H, &rgba, px, W * 4);
  CHECK(load("rgba.png", p, out));
  check_solid(out, p, (float[]){10, 20, 30}, 0);

  // 1-bit palette with a tRNS chunk (also ignored): left half red, right half blue.
  static const png_color pal[2] = {{250, 0, 5}, {0, 7, 240}};
  static const png_byte trns[1] = {0};
  PngOpts po = {.type = PNG_COLOR_TYPE_PALETTE, .depth = 1, .palette = pal, .npalette = 2,
                .trns = trns, .ntrns = 1};
  for (int y = 0; y < H; y++) {  // 20 pixels a row: 3 bytes, most significant bit first
    px[y * 3 + 0] = 0x00;
    px[y * 3 + 1] = 0x3F;  // pixels 8..9 index 0, 10..15 index 1
    px[y * 3 + 2] = 0xF0;
  }
  write_png(path("pal.png"), W, H, &po, px, 3);
  RtImagePrep full = raw(3, H, W, 0);
  float wide[3 * H * W];
  CHECK(load("pal.png", full, wide));
  CHECK(at(wide, &full, 0, 3, 9) == 250 && at(wide, &full, 1, 3, 9) == 0 &&
        at(wide, &full, 2, 3, 9) == 5);
  CHECK(at(wide, &full, 0, 3, 10) == 0 && at(wide, &full, 1, 3, 10) == 7 &&
        at(wide, &full, 2, 3, 10) == 240);

  // 16-bit RGB: v * 257 comes back as v.
  for (int i = 0; i < W * H; i++)
    memcpy(px + i * 6, (const uint8_t[]){12, 12, 34, 34, 56, 56}, 6);
  PngOpts o16 = {.type = PNG_COLOR_TYPE_RGB, .depth = 16};
  write_png(path("rgb16.png"), W, H, &o16, px, W * 6);
  CHECK(load("rgb16.png", p, out));
  check_solid(out, p, (float[]){12, 34, 56}, 0);

  // 8-bit gray, a ramp along x: exact for a gray network, replicated for RGB.
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++)
      px[y * W + x] = (uint8_t)(x * 12);
  PngOpts og = {.type = PNG_COLOR_TYPE_GRAY, .depth = 8};
  write_png(path("gray.png"), W, H, &og, px, W);
  RtImagePrep g1 = raw(1, H, W, 0);
  CHECK(load("gray.png", g1, wide));
  CHECK(at(wide, &g1, 0, 2, 0) == 0 && at(wide, &g1, 0, 9, 19) == 228);
  CHECK(load("gray.png", full, wide));
  for (int c = 0; c < 3; c++)
    CHECK(at(wide, &full, c, 4, 7) == 84);

  // 4-bit gray, expanded to 8 bits (15 -> 255).
  memset(px, 0xF0, (W / 2) * H);  // 15 then 0 in each byte
  PngOpts og4 = {.type = PNG_COLOR_TYPE_GRAY, .depth = 4};
  write_png(path("gray4.png"), W, H, &og4, px, W / 2);
  CHECK(load("gray4.png", g1, wide));
  CHECK(at(wide, &g1, 0, 0, 0) == 255 && at(wide, &g1, 0, 0, 1) == 0);

  // Gray + alpha: alpha ignored.
  for (int i = 0; i < W * H; i++)
    memcpy(px + i * 2, (const uint8_t[]){90, (uint8_t)i}, 2);
  PngOpts oga = {.type = PNG_COLOR_TYPE_GRAY_ALPHA, .depth = 8};
  write_png(path("ga.png"), W, H, &oga, px, W * 2);
  CHECK(load("ga.png", p, out));
  check_solid(out, p, (float[]){90, 90, 90}, 0);
}

// ---- resize and crop

static void test_geometry(void) {
  // Downscaling 64x32 to 32x16 (shorter side 16) averages 4 taps a pixel; on a linear
  // ramp the result is the ramp at the output pixel's centre, away from the border.
  // R = 4x: output column ox covers input [2 ox, 2 ox + 2), centre value 8 ox + 2.
  enum { W = 64, H = 32 };
  uint8_t px[W * H * 3];
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++) {
      uint8_t *q = px + ((size_t)y * W + x) * 3;
      q[0] = (uint8_t)(4 * x);
      q[1] = (uint8_t)(8 * y);
      q[2] = 200;
    }
  write_png_rgb(path("ramp.png"), W, H, px);
  RtImagePrep p = raw(3, 16, 16, 16);
  float out[3 * 60 * 60];
  CHECK(load("ramp.png", p, out));
  int bad = 0;
  for (int y = 0; y < 16; y++)
    for (int x = 0; x < 16; x++) {  // crop of the 32x16 result: columns 8..23
      bad += fabsf(at(out, &p, 0, y, x) - (8 * (x + 8) + 2)) > 1e-3f;
      bad += fabsf(at(out, &p, 2, y, x) - 200) > 1e-3f;
      if (y > 0 && y < 15)
        bad += fabsf(at(out, &p, 1, y, x) - (16 * y + 4)) > 1e-3f;
    }
  CHECK(bad == 0);

  // Enlarging keeps a solid colour solid: 20x10 with shorter side 30 is 60x30.
  fill(px, 20 * 10, 3, (const uint8_t[]){33, 66, 99});
  write_png_rgb(path("small.png"), 20, 10, px);
  RtImagePrep up = raw(3, 30, 60, 30);
  CHECK(load("small.png", up, out));
  check_solid(out, up, (float[]){33, 66, 99}, 1e-3);
  up.width = 61;  // one column more than the resized image has
  char err[512];
  CHECK(!rt_image_load(path("small.png"), &up, out, err, sizeof err));
  CHECK(strstr(err, "small.png") && strstr(err, "60x30") && strstr(err, "61x30"));

  // The longer side is truncated, as torchvision truncates it: 50x30 -> 33x20.
  fill(px, 50 * 30, 3, (const uint8_t[]){1, 2, 3});
  write_png_rgb(path("odd.png"), 50, 30, px);
  CHECK(load("odd.png", raw(3, 20, 33, 20), out));
  CHECK(!rt_image_load(path("odd.png"), &(RtImagePrep){3, 20, 34, 1, {0}, {1, 1, 1}, 20}, out,
                       err, sizeof err));
  CHECK(strstr(err, "33x20") != NULL);
  // Portrait: 30x50 -> 20x33.
  write_png_rgb(path("tall.png"), 30, 50, px);
  CHECK(load("tall.png", raw(3, 33, 20, 20), out));

  // An odd excess rounds half to even like Python: 35 - 2 = 33 columns over -> 16.
  for (int x = 0; x < 35; x++)
    memcpy(px + x * 3, (const uint8_t[]){(uint8_t)(4 * x), 0, 0}, 3);
  write_png_rgb(path("row.png"), 35, 1, px);
  RtImagePrep row = raw(3, 1, 2, 0);
  CHECK(load("row.png", row, out));
  CHECK(at(out, &row, 0, 0, 0) == 64 && at(out, &row, 0, 0, 1) == 68);
}

// ---- bad files

// Fails, names the file, says `what`, and leaves out alone.
static void check_bad(const char *name, RtImagePrep p, const char *what) {
  float out[3 * 16 * 16];
  for (int i = 0; i < 3 * 16 * 16; i++)
    out[i] = -12345;
  char err[512] = "";
  bool ok = rt_image_load(path(name), &p, out, err, sizeof err);
  bool named = strstr(err, name) != NULL, said = strstr(err, what) != NULL;
  if (ok || !named || !said)
    fprintf(stderr, "  %s: ok=%d error '%s' (wanted '%s')\n", name, ok, err, what);
  CHECK(!ok && named && said);
  CHECK(strcmp(rt_error(), err) == 0);
  int touched = 0;
  for (int i = 0; i < 3 * 16 * 16; i++)
    touched += out[i] != -12345;
  CHECK(touched == 0);
}

static void test_bad(void) {
  RtImagePrep p = raw(3, 16, 16, 0);
  write_bytes(path("hello.jpg"), "hello world\n", 12);
  check_bad("hello.jpg", p, "not a JPEG or PNG file");
  write_bytes(path("empty.png"), "", 0);
  check_bad("empty.png", p, "empty");
  write_bytes(path("two.jpg"), "\xFF\xD8", 2);
  check_bad("two.jpg", p, "truncated");
  check_bad("missing.png", p, "cannot open");

  // Noise, so that the compressed data is large and cut in its middle.
  enum { N = 64 };
  uint8_t px[N * N * 3];
  uint32_t s = 1;
  for (size_t i = 0; i < sizeof px; i++) {
    s = s * 1103515245u + 12345u;
    px[i] = (uint8_t)(s >> 16);
  }
  write_jpeg(path("noise.jpg"), N, N, JCS_RGB, 3, JCS_YCbCr, px, 90);
  write_png_rgb(path("noise.png"), N, N, px);
  uint8_t *buf;
  size_t n;
  CHECK(rt_read_file(path("noise.jpg"), 1 << 20, &buf, &n));
  write_bytes(path("cut.jpg"), buf, n / 2);
  check_bad("cut.jpg", p, "truncated");
  write_bytes(path("head.jpg"), buf, 40);  // inside the header
  check_bad("head.jpg", p, "truncated");
  free(buf);
  jpeg_progressive = true;  // all scans are read before the first row comes out
  write_jpeg(path("noise-p.jpg"), N, N, JCS_RGB, 3, JCS_YCbCr, px, 90);
  jpeg_progressive = false;
  CHECK(rt_read_file(path("noise-p.jpg"), 1 << 20, &buf, &n));
  write_bytes(path("cut-p.jpg"), buf, n * 3 / 4);
  check_bad("cut-p.jpg", p, "truncated");
  free(buf);
  CHECK(rt_read_file(path("noise.jpg"), 1 << 20, &buf, &n));
  size_t sof = 2;  // the baseline frame header
  while (sof + 5 < n && !(buf[sof] == 0xFF && buf[sof + 1] == 0xC0))
    sof++;
  CHECK(sof + 5 < n);
  buf[sof + 4] = 7;  // 7-bit samples: libjpeg reads the header and refuses it
  write_bytes(path("junk.jpg"), buf, n);
  check_bad("junk.jpg", p, "corrupt JPEG");
  free(buf);

  CHECK(rt_read_file(path("noise.png"), 1 << 20, &buf, &n));
  write_bytes(path("cut.png"), buf, n / 2);
  check_bad("cut.png", p, "truncated");
  write_bytes(path("head.png"), buf, 20);
  check_bad("head.png", p, "truncated");
  buf[n / 2] ^= 0xFF;  // inside IDAT: its CRC no longer matches
  write_bytes(path("crc.png"), buf, n);
  check_bad("crc.png", p, "corrupt PNG");
  free(buf);

  // A valid header claiming 100000x100000 and no pixel data: refused by its size, not
  // found truncated after an attempt to decode.
  PngOpts hdr = {.type = PNG_COLOR_TYPE_RGB, .depth = 8, .header_only = true};
  write_png(path("big.png"), 100000, 100000, &hdr, NULL, 0);
  check_bad("big.png", p, "100000x100000 pixels is more than the limit");

  // A crop larger than the image, with and without a resize.
  check_bad("noise.png", raw(3, 16, 65, 0), "smaller than the 65x16 crop");
  check_bad("noise.png", raw(3, 33, 16, 32), "smaller than the 16x33 crop");

  // A preprocessing the loader cannot honour.
  check_bad("noise.png", raw(2, 16, 16, 0), "2 channels");
  RtImagePrep zero = raw(3, 16, 16, 0);
  zero.std[1] = 0;
  check_bad("noise.png", zero, "std");
}

// ---- the committed fixtures

// A cartoon cat: an orange head with ears, green eyes and a pink nose, on sky over
// grass. Flat colours keep the PNG small.
static void make_cat(uint8_t px[48][64][3]) {
  enum { SKY, GRASS, FUR, EYE, NOSE };
  static const uint8_t colour[][3] = {
      {110, 170, 225}, {70, 150, 60}, {235, 140, 40}, {60, 170, 70}, {240, 130, 160}};
  for (int y = 0; y < 48; y++)
    for (int x = 0; x < 64; x++) {
      int dx = x - 32, dy = y - 27, c = y < 36 ? SKY : GRASS;
      if (dx * dx + dy * dy <= 14 * 14 ||
          (y >= 8 && y < 18 && (abs(x - 22) <= (y - 8) / 2 || abs(x - 42) <= (y - 8) / 2)))
        c = FUR;
      if ((dx + 6) * (dx + 6) + (dy + 3) * (dy + 3) <= 5 ||
          (dx - 6) * (dx - 6) + (dy + 3) * (dy + 3) <= 5)
        c = EYE;
      if (abs(dx) <= 1 && dy >= 2 && dy <= 3)
        c = NOSE;
      memcpy(px[y][x], colour[c], 3);
    }
}

static void write_fixtures(const char *to) {
  static uint8_t cat[48][64][3];
  make_cat(cat);
  char p[512];
  snprintf(p, sizeof p, "%s/cat.jpg", to);
  write_jpeg(p, 64, 48, JCS_RGB, 3, JCS_YCbCr, &cat[0][0][0], 90);
  snprintf(p, sizeof p, "%s/cat.png", to);
  write_png_rgb(p, 64, 48, &cat[0][0][0]);
}

// Run from the repository root (ctest's working directory).
static void test_fixtures(void) {
  static uint8_t cat[48][64][3];
  make_cat(cat);
  RtImagePrep p = raw(3, 48, 64, 0);
  static float out[3 * 48 * 64];
  char err[512];
  CHECK(rt_image_load("tests/data/cat.png", &p, out, err, sizeof err));
  int bad = 0;
  double jpeg_err = 0;
  for (int c = 0; c < 3; c++)
    for (int y = 0; y < 48; y++)
      for (int x = 0; x < 64; x++)
        bad += at(out, &p, c, y, x) != cat[y][x][c];
  CHECK(bad == 0);
  CHECK(rt_image_load("tests/data/cat.jpg", &p, out, err, sizeof err));
  for (int c = 0; c < 3; c++)
    for (int y = 0; y < 48; y++)
      for (int x = 0; x < 64; x++)
        jpeg_err += fabs(at(out, &p, c, y, x) - cat[y][x][c]);
  CHECK(jpeg_err / (3 * 48 * 64) < 4);
  // The paper's pipeline: shorter side to 256 (341x256), central 224x224.
  static float big[3 * 224 * 224];
  RtImagePrep paper = {3, 224, 224, 1.0f / 255, {0.485f, 0.456f, 0.406f},
                       {0.229f, 0.224f, 0.225f}, 256};
  CHECK(rt_image_load("tests/data/cat.jpg", &paper, big, err, sizeof err));
  // The centre of the crop is the centre of the head: orange.
  CHECK_NEAR(big[112 * 224 + 112], (235 / 255.f - 0.485f) / 0.229f, 0.1);
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "--write-fixtures")) {
    write_fixtures(argv[2]);
    return 0;
  }
  if (!mkdtemp(dir))
    return 1;
  test_jpeg();
  test_png_rgb();
  test_png_kinds();
  test_geometry();
  test_bad();
  test_fixtures();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  TEST_MAIN_END();
}
