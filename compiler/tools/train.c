// alexc train, alexc eval (stub: being written).
#include "../alexc.h"
