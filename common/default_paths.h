// Where proctord listens and keeps its state when nobody says otherwise.
//
// As root: /run/proctor/proctord.sock and /var/lib/proctor. Otherwise
// $XDG_RUNTIME_DIR/proctor/proctord.sock (falling back to /tmp/proctor-$UID) and
// $XDG_STATE_HOME/proctor (falling back to ~/.local/state/proctor). Declared services: as root
// /etc/proctor/services.d, otherwise $XDG_CONFIG_HOME/proctor/services.d (falling back to
// ~/.config/proctor/services.d).
#ifndef PROCTOR_COMMON_DEFAULT_PATHS_H_
#define PROCTOR_COMMON_DEFAULT_PATHS_H_

#include <string>

namespace proctor {

std::string DefaultSocketPath();
std::string DefaultStateDir();
std::string DefaultServicesDir();
// "unix:" + DefaultSocketPath(): the address the CLI uses when none is given.
std::string DefaultAddress();

}  // namespace proctor

#endif  // PROCTOR_COMMON_DEFAULT_PATHS_H_
