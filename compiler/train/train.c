// The training loop (stub: being written).
#include "../alexc.h"
