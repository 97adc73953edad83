#include <iostream>
#include "greet.h"
int main() { std::cout << greet("corral") << std::endl; }
