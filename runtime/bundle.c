// Loading a model bundle: the shared object `alexc compile -o MODEL.so` writes
// (compiler/backends/llvm/bundle.h). It exports
//
//   const unsigned char *alexc_model_v1(unsigned long long *size);
//
// returning the plan file's bytes, which rt_plan_parse reads exactly as it reads a
// plan file. The library is opened only for that call: rt_plan_parse copies every
// name, step and module it keeps, so the library is closed before returning.
//
// Trust: dlopen runs a library's constructors, so loading a bundle runs its code. The
// bundles alexc writes have none (linked -nostdlib), but a bundle from elsewhere must
// be trusted like any shared library. A plan file is only parsed.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexrt.h"
#include "alexrt_cuda.h"
#include "internal.h"

#define ENTRY RT_BUNDLE_ENTRY

typedef const unsigned char *(*Entry)(unsigned long long *size);

// dlopen trusts a file's headers: a bundle cut short (a partial copy or download)
// gets segments mapped past its end, and the loader dies of SIGBUS touching them. So
// first check, in the file's bytes, that the ELF header and every segment lie inside
// the file. Files of another class or machine are left to dlopen, which refuses them
// with a message.
bool rt_check_elf(const char *path, const uint8_t *data, size_t size) {
  ElfW(Ehdr) eh;
  if (size < sizeof eh)
    return rt_fail("%s: cannot load the bundle: a truncated ELF file (%zu bytes)", path, size);
  memcpy(&eh, data, sizeof eh);
  if (eh.e_ident[EI_CLASS] != (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32) ||
      eh.e_phentsize != sizeof(ElfW(Phdr)))
    return true;  // dlopen explains
  bool ok = eh.e_phoff <= size && eh.e_phnum <= (size - eh.e_phoff) / sizeof(ElfW(Phdr));
  for (int i = 0; ok && i < eh.e_phnum; i++) {
    ElfW(Phdr) ph;
    memcpy(&ph, data + eh.e_phoff + i * sizeof ph, sizeof ph);
    ok = ph.p_offset <= size && ph.p_filesz <= size - ph.p_offset;
  }
  return ok || rt_fail("%s: cannot load the bundle: truncated or damaged (its ELF headers "
                       "point past its end)",
                       path);
}

bool rt_bundle_load(const char *path, const uint8_t *data, size_t size, RtPlan *p) {
  memset(p, 0, sizeof *p);
  if (!rt_check_elf(path, data, size))
    return false;
  // A name without a '/' would make dlopen search the library path: say where it is.
  size_t n = strlen(path);
  char *lib = malloc(n + 3);
  if (!lib)
    return rt_fail("%s: out of memory", path);
  snprintf(lib, n + 3, "%s%s", strchr(path, '/') ? "" : "./", path);
  dlerror();
  void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
  free(lib);
  if (!h) {
    const char *why = dlerror();
    return rt_fail("%s: cannot load the bundle: %s", path, why ? why : "dlopen failed");
  }
  Entry entry = (Entry)dlsym(h, ENTRY);
  if (!entry) {
    dlclose(h);
    return rt_fail("%s: not an alexc model (no " ENTRY ")", path);
  }
  unsigned long long plan_size = 0;
  const unsigned char *plan = entry(&plan_size);
  bool ok;
  if (!plan || !plan_size || plan_size > RT_MAX_FILE)
    ok = rt_fail("%s: " ENTRY " returned no model (%llu bytes)", path, plan_size);
  else if (!(ok = rt_plan_parse(plan, (size_t)plan_size, p))) {
    char why[512];
    snprintf(why, sizeof why, "%s", rt_error());
    rt_fail("%s: %s", path, why);
  }
  dlclose(h);
  return ok;
}
