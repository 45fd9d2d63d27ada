// Training data (stub: being written).
#include "../alexc.h"
Dataset *data_open(const char *path, const DataOptions *o) { (void)o; error("%s: data loading is not written yet", path); return NULL; }
void data_close(Dataset *d) { (void)d; }
int64_t data_size(const Dataset *d) { (void)d; return 0; }
int data_classes(const Dataset *d) { (void)d; return 0; }
int data_views(const Dataset *d) { (void)d; return 1; }
void data_start(Dataset *d, int epoch, int64_t first) { (void)d; (void)epoch; (void)first; }
int data_next(Dataset *d, int batch, float *x, int32_t *labels) { (void)d; (void)batch; (void)x; (void)labels; return 0; }
int64_t data_skipped(const Dataset *d) { (void)d; return 0; }
