// proctor: the command line client of proctord (see client/cli/cli.h for the contract).
#include "client/cli/cli.h"

int main(int argc, char** argv) { return proctor::RunCli(argc, argv); }
