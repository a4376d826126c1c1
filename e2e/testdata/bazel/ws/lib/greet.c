#include "lib/greet.h"

const char *greeting(void) { return "hello from hearth e2e"; }
