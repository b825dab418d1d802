"""A C program of N functions (each a small loop), and a main calling them all."""
import sys

n = int(sys.argv[1])
print('#include <stdio.h>')
for i in range(n):
    print('static unsigned long f%d(unsigned long x) { for (int k = 0; k < %d; k++) '
          'x = x * 6364136223846793005UL + %d + (x >> 7); return x ^ %d; }' % (i, 3 + i % 17, i, i))
print('int main(void) { unsigned long x = 1;')
for i in range(n):
    print('  x = f%d(x);' % i)
print('  printf("%lu\\n", x); return 0; }')
