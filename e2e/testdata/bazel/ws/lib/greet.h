#ifndef HEARTH_E2E_GREET_H
#define HEARTH_E2E_GREET_H

const char *greeting(void);

#endif
