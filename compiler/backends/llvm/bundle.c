// The model bundle (bundle.h): a shared object made with the LLVM C API.
//
// The module is two symbols:
//
//   @alexc_payload = private constant [N x i8] c"...", section ".rodata", align 16
//   define i8* @alexc_model_v1(i64* %size) nounwind {
//     store i64 N, i64* %size
//     ret i8* getelementptr inbounds ([N x i8], [N x i8]* @alexc_payload, i64 0, i64 0)
//   }
//
// LLVM emits it as an ELF object for the host (PIC, so it can go into a .so); the
// system C compiler links it with -shared -nostdlib: no libc, no crt files, hence no
// undefined symbols, no DT_NEEDED, no constructors. Loading it runs no code of ours
// until the runtime calls alexc_model_v1.
#define _GNU_SOURCE
#include "bundle.h"

#include <errno.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>

#include "../../alexc.h"

extern char **environ;

// The module holding the payload and the entry point; NULL after a message.
static LLVMModuleRef build_module(LLVMContextRef ctx, const uint8_t *payload, size_t size) {
  LLVMModuleRef m = LLVMModuleCreateWithNameInContext("alexc_bundle", ctx);
  LLVMTypeRef i8 = LLVMInt8TypeInContext(ctx), i64 = LLVMInt64TypeInContext(ctx);
  LLVMValueRef data = LLVMConstStringInContext(ctx, (const char *)payload, (unsigned)size, 1);
  LLVMTypeRef array = LLVMTypeOf(data);
  LLVMValueRef g = LLVMAddGlobal(m, array, "alexc_payload");
  LLVMSetInitializer(g, data);
  LLVMSetGlobalConstant(g, 1);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  LLVMSetAlignment(g, 16);
  LLVMSetSection(g, ".rodata");  // not a mergeable string section, whatever the bytes

  LLVMTypeRef params[] = {LLVMPointerType(i64, 0)};
  LLVMTypeRef fty = LLVMFunctionType(LLVMPointerType(i8, 0), params, 1, 0);
  LLVMValueRef f = LLVMAddFunction(m, RT_BUNDLE_ENTRY, fty);
  LLVMSetLinkage(f, LLVMExternalLinkage);
  LLVMSetVisibility(f, LLVMDefaultVisibility);
  const char *attr = "nounwind";
  LLVMAddAttributeAtIndex(
      f, LLVMAttributeFunctionIndex,
      LLVMCreateEnumAttribute(ctx, LLVMGetEnumAttributeKindForName(attr, strlen(attr)), 0));
  LLVMBuilderRef b = LLVMCreateBuilderInContext(ctx);
  LLVMPositionBuilderAtEnd(b, LLVMAppendBasicBlockInContext(ctx, f, "entry"));
  LLVMBuildStore(b, LLVMConstInt(i64, size, 0), LLVMGetParam(f, 0));
  LLVMValueRef zero = LLVMConstInt(i64, 0, 0), idx[] = {zero, zero};
  LLVMBuildRet(b, LLVMConstInBoundsGEP2(array, g, idx, 2));
  LLVMDisposeBuilder(b);

  char *msg = NULL;
  if (LLVMVerifyModule(m, LLVMReturnStatusAction, &msg)) {
    error("llvm: the bundle module does not verify (a compiler bug): %s", msg ? msg : "");
    LLVMDisposeMessage(msg);
    LLVMDisposeModule(m);
    return NULL;
  }
  LLVMDisposeMessage(msg);
  return m;
}

// The module as an object file for the host, in memory; NULL after a message.
static LLVMMemoryBufferRef emit_object(LLVMModuleRef m) {
  if (LLVMInitializeNativeTarget() || LLVMInitializeNativeAsmPrinter()) {
    error("llvm: this LLVM cannot generate code for the host (no native target)");
    return NULL;
  }
  char *triple = LLVMGetDefaultTargetTriple(), *msg = NULL;
  LLVMTargetRef target;
  LLVMMemoryBufferRef obj = NULL;
  if (LLVMGetTargetFromTriple(triple, &target, &msg)) {
    error("llvm: no target for the host triple '%s': %s", triple, msg ? msg : "");
    LLVMDisposeMessage(msg);
    LLVMDisposeMessage(triple);
    return NULL;
  }
  LLVMTargetMachineRef tm = LLVMCreateTargetMachine(
      target, triple, "generic", "", LLVMCodeGenLevelDefault, LLVMRelocPIC, LLVMCodeModelDefault);
  if (!tm) {
    error("llvm: cannot create a target machine for '%s'", triple);
    LLVMDisposeMessage(triple);
    return NULL;
  }
  LLVMSetTarget(m, triple);
  LLVMTargetDataRef layout = LLVMCreateTargetDataLayout(tm);
  LLVMSetModuleDataLayout(m, layout);
  LLVMDisposeTargetData(layout);
  if (LLVMTargetMachineEmitToMemoryBuffer(tm, m, LLVMObjectFile, &msg, &obj)) {
    error("llvm: emitting the bundle's object file for '%s' failed: %s", triple,
          msg ? msg : "");
    obj = NULL;
  }
  LLVMDisposeMessage(msg);
  LLVMDisposeTargetMachine(tm);
  LLVMDisposeMessage(triple);
  return obj;
}

static bool write_file(const char *tmp, const char *path, const void *data, size_t size) {
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    error("%s: cannot write: %s", path, strerror(errno));
    return false;
  }
  bool ok = fwrite(data, 1, size, f) == size;
  ok = fclose(f) == 0 && ok;
  if (!ok)
    error("%s: cannot write: %s", path, strerror(errno));
  return ok;
}

// Runs `$CC -shared -nostdlib -o so obj`.
static bool link_shared(const char *obj, const char *so, const char *path) {
  const char *args[] = {"-shared", "-nostdlib", "-o", so, obj};
  return llvm_cc(args, 5, path, "the bundle");
}

bool llvm_cc(const char *const *args, int n_args, const char *path, const char *what) {
  const char *env = getenv("CC");
  char *cc = xstrdup(env && strspn(env, " \t") < strlen(env) ? env : "cc");
  char *argv[128];
  int argc = 0;
  char *save = NULL;
  for (char *w = strtok_r(cc, " \t", &save); w && argc < 32; w = strtok_r(NULL, " \t", &save))
    argv[argc++] = w;
  for (int i = 0; i < n_args && argc < 126; i++)
    argv[argc++] = (char *)args[i];
  argv[argc] = NULL;

  char command[4096];
  size_t n = 0;
  command[0] = 0;
  for (int i = 0; i < argc && n < sizeof command; i++)
    n += (size_t)snprintf(command + n, sizeof command - n, "%s%s", i ? " " : "", argv[i]);

  pid_t pid;
  int rc = posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ), status = 0;
  bool ok = false;
  if (rc != 0)
    error("%s: cannot run the linker '%s': %s (set $CC to a C compiler)", path, argv[0],
          strerror(rc));
  else if (waitpid(pid, &status, 0) < 0)
    error("%s: waiting for the linker: %s (%s)", path, strerror(errno), command);
  else if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
    error("%s: cannot run the linker '%s' (exit 127; set $CC to a C compiler): %s", path,
          argv[0], command);
  else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    error("%s: linking %s failed (%s %d): %s", path, what,
          WIFEXITED(status) ? "exit status" : "signal",
          WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), command);
  else
    ok = true;
  free(cc);
  return ok;
}

bool llvm_write_bundle(const uint8_t *payload, size_t size, const char *path) {
  if (size == 0 || size > UINT_MAX) {
    error("%s: a bundle holds 1 byte to 4 GiB, not %zu bytes", path, size);
    return false;
  }
  LLVMContextRef ctx = LLVMContextCreate();
  LLVMModuleRef m = build_module(ctx, payload, size);
  LLVMMemoryBufferRef obj = m ? emit_object(m) : NULL;
  if (m)
    LLVMDisposeModule(m);
  LLVMContextDispose(ctx);
  if (!obj)
    return false;

  char *tmp_o = format("%s.tmp.%ld.o", path, (long)getpid());
  char *tmp_so = format("%s.tmp.%ld.so", path, (long)getpid());
  bool ok = write_file(tmp_o, path, LLVMGetBufferStart(obj), LLVMGetBufferSize(obj));
  LLVMDisposeMemoryBuffer(obj);
  ok = ok && link_shared(tmp_o, tmp_so, path);
  remove(tmp_o);
  if (ok && rename(tmp_so, path) != 0) {
    error("%s: cannot write: %s", path, strerror(errno));
    ok = false;
  }
  if (!ok)
    remove(tmp_so);
  free(tmp_o);
  free(tmp_so);
  return ok;
}
