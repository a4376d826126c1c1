#include <stdio.h>

#include "lib/greet.h"

int main(void) {
  puts(greeting());
  return 0;
}
