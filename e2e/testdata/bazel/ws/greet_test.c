#include <stdio.h>
#include <string.h>

#include "lib/greet.h"

int main(void) {
  const char *got = greeting();
  if (strcmp(got, "hello from hearth e2e") != 0) {
    fprintf(stderr, "greeting() = \"%s\"\n", got);
    return 1;
  }
  puts("greet_test passed");
  return 0;
}
