// image.h — photos in, network input out: JPEG (libjpeg-turbo) and PNG (libpng)
// decoding and the paper's preprocessing, for a deployed model to classify a photo.
// Part of the runtime: no LLVM, no libyaml.
//
// The paper (Krizhevsky et al. 2012, section 2) rescales an image so that its shorter
// side is 256, crops the central patch, and subtracts the mean. torchvision's ImageNet
// weights want the same geometry and, per channel, (v / 255 - mean) / std:
//
//   RtImagePrep p = {3, 224, 224, 1.0f / 255, {0.485f, 0.456f, 0.406f},
//                    {0.229f, 0.224f, 0.225f}, 256};
#ifndef ALEXRT_IMAGE_H
#define ALEXRT_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// The largest image file read, and the most pixels an image (as its header states
// them, or after resizing) may have: 2^27 is 16384 x 8192, far more than any camera.
#define RT_IMAGE_MAX_FILE ((size_t)256 << 20)
#define RT_IMAGE_MAX_PIXELS ((uint64_t)1 << 27)
// The largest crop side or resize target accepted.
#define RT_IMAGE_MAX_SIDE 65536

typedef struct {
  int channels, height, width;  // the network's input (channels is 1 or 3)
  float scale;                  // pixel values 0..255 are multiplied by this first (1 or 1/255)
  float mean[3], std[3];        // then (v - mean[c]) / std[c]  (std 1 = no division)
  int resize;                   // shorter side resized to this (the paper: 256); 0 = no resize
} RtImagePrep;

// Reads a JPEG or PNG (recognised by its magic bytes, not its extension), converts it
// to RGB (or to gray, ITU-R 601 luma, when channels is 1), resizes its shorter side to
// prep->resize, centre-crops height x width, and writes channels*height*width floats
// (CHW) to out. Alpha is ignored, EXIF orientation and colour profiles are not applied.
// On error returns false, leaves out untouched, and writes one message naming the file
// to err ("photo.jpg: not a JPEG or PNG file"); rt_error() holds the same message.
// err may be NULL.
bool rt_image_load(const char *path, const RtImagePrep *prep, float *out, char *err,
                   size_t err_size);

#endif
