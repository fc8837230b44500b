# Debian packages, one per install component (`cpack --config build/CPackConfig.cmake`;
# deploy/package-test.sh builds, installs and exercises them):
#   proctord        component proctord: proctord, proctor-keeper, the systemd unit
#   proctor         component cli: the command line (and its bash completion)
#   libproctor-dev  component dev: the client library, its headers, the protos, the CMake
#                   package and the pkg-config file
# They install below /usr whatever prefix the build tree was configured for. Runtime
# dependencies come from dpkg-shlibdeps on the binaries, so they name Debian 12's library
# packages (libgrpc++1.51, libprotobuf32, ...).
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME proctor)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "proctor maintainers")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Python's multiprocessing.Process as a gRPC service")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_PACKAGE_DIRECTORY ${PROJECT_BINARY_DIR}/packages)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL proctord cli dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

set(CPACK_DEBIAN_PROCTORD_PACKAGE_NAME proctord)
set(CPACK_DEBIAN_PROCTORD_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PROCTORD_PACKAGE_RECOMMENDS proctor)
set(CPACK_DEBIAN_PROCTORD_PACKAGE_CONTROL_EXTRA
  ${PROJECT_SOURCE_DIR}/deploy/debian/proctord/postinst
  ${PROJECT_SOURCE_DIR}/deploy/debian/proctord/prerm
  ${PROJECT_SOURCE_DIR}/deploy/debian/proctord/postrm)
set(CPACK_COMPONENT_PROCTORD_DESCRIPTION
  "process supervisor with multiprocessing's API over gRPC
proctord owns worker processes for its clients: they start, join, terminate and inspect them
over gRPC, with the vocabulary of Python's multiprocessing.Process. Terminating a process also
ends everything below it; every call proves it holds a key. The package holds proctord, its
keeper (the workers' parent, which lets proctord restart without losing them) and a systemd
unit, proctord.service, that is not enabled: systemctl enable --now proctord.")

set(CPACK_DEBIAN_CLI_PACKAGE_NAME proctor)
set(CPACK_DEBIAN_CLI_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_CLI_PACKAGE_SUGGESTS proctord)
set(CPACK_COMPONENT_CLI_DESCRIPTION
  "command line client of proctord
proctor starts, joins, terminates, lists and follows the processes of a proctord (local or
remote), and uses its synchronisation objects (locks, semaphores, events).")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME libproctor-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libgrpc++-dev, libprotobuf-dev, libabsl-dev, libssl-dev")
set(CPACK_DEBIAN_DEV_PACKAGE_SUGGESTS proctord)
set(CPACK_COMPONENT_DEV_DESCRIPTION
  "client library of proctord (static library and headers)
proctor::Client (one call per RPC) and proctor::Process (multiprocessing.Process in C++) with
the synchronisation objects, the API's protos and their generated C++ code, a CMake package
(find_package(proctor), target proctor::client) and a pkg-config file (proctor).")

include(CPack)
