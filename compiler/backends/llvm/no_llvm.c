// The bundle writer in a build without LLVM (-DALEXC_LLVM=OFF): says why not.
#include "../../alexc.h"
#include "bundle.h"

bool llvm_write_bundle(const uint8_t *payload, size_t size, const char *path) {
  (void)payload, (void)size;
  error("%s: this alexc was built without LLVM (ALEXC_LLVM=OFF): it cannot write a .so "
        "bundle; write a plan file instead (-o MODEL.plan)",
        path);
  return false;
}
