//! Interferes: the Chaotic-AUR way of adjusting a PKGBUILD folder before it is built, from the
//! files in its `.CI/` folder. All of it runs **inside the sandbox** (offline, only `/build`
//! writable, as the build user), in the copy of the folder (`/build/pkgbuild`), never on the
//! host: `prepare` is shell code from the tree, and even `patch` gets hostile input.
//!
//! Applied in this order (Chaotic's `interference-apply`), by [`INTERFERE_SCRIPT`] in
//! [`crate::Phase::Interfere`], before the `.SRCINFO` phase:
//!
//! 1. `.CI/prepare` is sourced (bash) in the folder. `return "$CI_CODE_SKIP"` skips the build
//!    ([`SKIP_CODE`]); any other non-zero status fails it. `$CAUR_PUSH 'command'` queues a
//!    command that runs in the build phase's shell before makepkg (Chaotic runs them in the
//!    build chroot).
//! 2. `.CI/interfere.patch` is applied with `patch -Np1`, after a `--dry-run` of the whole
//!    patch: a patch that does not apply fails the build ([`PATCH_FAILED_CODE`]) and changes
//!    nothing.
//! 3. `.CI/PKGBUILD.prepend` is put before the PKGBUILD, `.CI/PKGBUILD.append` after it.
//! 4. `CI_PACKAGE_BUMP` (from `.CI/config`, passed as `PACMESH_PACKAGE_BUMP=version/count`):
//!    when the PKGBUILD's version is `version` (`[epoch:]pkgver-pkgrel`, or without
//!    `-pkgrel`), `pkgrel="${pkgrel}.count"` is appended; a stale bump (the PKGBUILD moved on)
//!    is noted in the log and not applied.
//! 5. The rebuild bump of the queue entry (`QueueEntry::pkgrel_bump`, passed as
//!    `PACMESH_REBUILD_BUMP=version/count`): when the PKGBUILD's version (before step 4) is
//!    `version`, pkgrel becomes `pkgrel.count` (or `pkgrel.N` with the larger of the two counts
//!    when `CI_PACKAGE_BUMP` also applies); when the PKGBUILD itself says `version.M` with
//!    M < count, its minor part is replaced (`1.1` → `1.2`). A PKGBUILD that moved on (a new
//!    pkgver or pkgrel) is left alone: a new version needs no bump.
//!
//! After the build, `.CI/on-success.sh` or `.CI/on-failure.sh` runs (bash, same sandbox
//! rules, [`HOOK_TIMEOUT`]); its status is logged and does not change the outcome.

use std::time::Duration;

/// `CI_CODE_SKIP`: the status with which `prepare` asks to skip the build.
pub const SKIP_CODE: i32 = 123;
/// The status of the interfere script when `interfere.patch` does not apply.
pub const PATCH_FAILED_CODE: i32 = 40;
/// The status of the interfere script when `prepare` failed.
pub const PREPARE_FAILED_CODE: i32 = 41;
/// Wall-clock limit of an `on-success.sh` / `on-failure.sh` hook.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(120);
/// Where `$CAUR_PUSH` collects commands (inside the sandbox; `/build/home` is `$HOME`).
pub const PUSH_FILE: &str = "/build/home/.pacmesh-caur-push.sh";

/// Applies the interferes (see the module docs). A constant: nothing is interpolated into it;
/// the bumps come in `PACMESH_PACKAGE_BUMP` and `PACMESH_REBUILD_BUMP`.
pub const INTERFERE_SCRIPT: &str = r#"set -u
ci=.CI
export CI_CODE_SKIP=123
CAUR_PUSH() { printf '%s\n' "$*" >> /build/home/.pacmesh-caur-push.sh; }
CAUR_PUSH=CAUR_PUSH
if [[ -f $ci/prepare ]]; then
  echo "==> pacmesh: interfere: sourcing .CI/prepare"
  ( set +u; source "$ci/prepare" )
  rc=$?
  if (( rc == 123 )); then
    echo "==> pacmesh: interfere: .CI/prepare asked to skip the build (CI_CODE_SKIP)"
    exit 123
  elif (( rc != 0 )); then
    echo "==> pacmesh: interfere: .CI/prepare failed with status $rc"
    exit 41
  fi
fi
if [[ -f $ci/interfere.patch ]]; then
  echo "==> pacmesh: interfere: applying .CI/interfere.patch"
  if ! patch --dry-run --batch -Np1 < "$ci/interfere.patch"; then
    echo "==> pacmesh: interfere: .CI/interfere.patch does not apply"
    exit 40
  fi
  patch --batch --no-backup-if-mismatch -Np1 < "$ci/interfere.patch" || exit 40
fi
if [[ -f $ci/PKGBUILD.prepend ]]; then
  echo "==> pacmesh: interfere: prepending .CI/PKGBUILD.prepend"
  { cat "$ci/PKGBUILD.prepend"; echo; cat PKGBUILD; } > .PKGBUILD.pacmesh || exit 42
  mv -f .PKGBUILD.pacmesh PKGBUILD || exit 42
fi
if [[ -f $ci/PKGBUILD.append ]]; then
  echo "==> pacmesh: interfere: appending .CI/PKGBUILD.append"
  { echo; cat "$ci/PKGBUILD.append"; echo; } >> PKGBUILD || exit 42
fi
have=
if [[ -n ${PACMESH_PACKAGE_BUMP:-}${PACMESH_REBUILD_BUMP:-} ]]; then
  have=$( source ./PKGBUILD >/dev/null 2>&1; printf '%s' "${epoch:+$epoch:}${pkgver:-}-${pkgrel:-}" )
fi
bump=0
whole=1
if [[ -n ${PACMESH_PACKAGE_BUMP:-} ]]; then
  want=${PACMESH_PACKAGE_BUMP%/*}
  count=${PACMESH_PACKAGE_BUMP##*/}
  if [[ $want == "$have" || $want == "${have%-*}" ]]; then
    bump=$count
    echo "==> pacmesh: interfere: CI_PACKAGE_BUMP: $have bumped to pkgrel ${have##*-}.$count"
  else
    echo "==> pacmesh: interfere: CI_PACKAGE_BUMP $want does not match the PKGBUILD's $have: not applied"
  fi
fi
if [[ -n ${PACMESH_REBUILD_BUMP:-} ]]; then
  want=${PACMESH_REBUILD_BUMP%/*}
  count=${PACMESH_REBUILD_BUMP##*/}
  rel=${have##*-}
  if [[ $want == "$have" ]]; then
    if (( count > bump )); then
      bump=$count
      echo "==> pacmesh: interfere: rebuild of a published version: $have bumped to pkgrel $rel.$count"
    fi
  elif [[ $rel == *.* && $want == "${have%.*}" && ${have##*.} =~ ^[0-9]+$ ]] && (( 10#${have##*.} < count )); then
    bump=$count
    whole=0
    echo "==> pacmesh: interfere: rebuild of a published version: $have bumped to pkgrel ${rel%.*}.$count"
  else
    echo "==> pacmesh: interfere: the rebuild bump for $want does not match the PKGBUILD's $have (a new version needs none): not applied"
  fi
fi
if (( bump > 0 )); then
  if (( whole )); then
    printf '\npkgrel="${pkgrel}.%s"\n' "$bump" >> PKGBUILD || exit 42
  else
    printf '\npkgrel="${pkgrel%%.*}.%s"\n' "$bump" >> PKGBUILD || exit 42
  fi
fi
exit 0
"#;

/// Runs a hook (`$1`, relative to the folder) with bash.
pub const HOOK_SCRIPT: &str = r#"echo "==> pacmesh: running .CI/$1"
bash ".CI/$1"
rc=$?
echo "==> pacmesh: .CI/$1 exited with status $rc"
exit 0
"#;

/// Runs the build phase's command after the `$CAUR_PUSH` commands.
pub const PUSH_WRAPPER: &str = r#"echo "==> pacmesh: running the commands .CI/prepare pushed"
source /build/home/.pacmesh-caur-push.sh || { echo "==> pacmesh: a pushed command failed"; exit 1; }
exec "$@"
"#;
