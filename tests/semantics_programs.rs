//! Everyday programs on the mount and on a plain directory: `cp -a`, `tar --xattrs`,
//! `gzip`, `cp --sparse=always`, `fallocate --dig-holes`, `truncate`, `getfattr` and
//! `du`. Their output and the resulting tree (modes, owners, sizes, link counts, times
//! that the programs set, xattrs, allocated blocks) must be the same in both places.

mod common;

use std::process::Command;

use common::Mode;
use common::semantics::with_case;

both_modes!(archive_compress_sparse);

/// Builds a small log tree with an xattr, an owner, a fixed time, a hard link, a symlink
/// and a sparse file, then copies, archives, compresses and sparsifies it. Prints what
/// does not depend on the current time: every entry except the root (whose link count
/// includes the hidden state directory on the mount), the times that the programs set,
/// the xattrs that survived, and the allocated sizes.
const SCENARIO: &str = r#"
set -eu
cd "$1"
mkdir src
cd src
for i in $(seq 1 1000); do echo "line $i"; done > app.log
setfattr -n user.origin -v host1 app.log
chmod 640 app.log
chown 12:34 app.log
touch -d '2020-01-02 03:04:05.123456789' app.log
ln app.log hard.log
ln -s app.log sym.log
truncate -s 10M sparse.bin
printf 'x' | dd of=sparse.bin bs=1 seek=5000000 conv=notrunc status=none
cd ..
cp -a src copy
tar --xattrs -cf archive.tar src
mkdir untar
tar --xattrs -xf archive.tar -C untar
gzip -kf src/app.log
cp src/app.log rotated.log
gzip rotated.log
cp --sparse=always src/sparse.bin sparse2.bin
head -c 300000 /dev/zero > zeros.bin
fallocate --dig-holes zeros.bin
truncate -s 12345 src/app.log.copy
find . -mindepth 1 -path ./archive.tar -prune -o -printf '%p %M %U:%G %s %n %l\n' | sort
find . -type f ! -newermt 2021-01-01 -printf '%p %T@\n' | sort
getfattr -d copy/app.log untar/src/app.log src/app.log.gz rotated.log.gz
du -k src/sparse.bin sparse2.bin zeros.bin
"#;

fn archive_compress_sparse(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(|root| {
            let out = common::run(
                Command::new("bash")
                    .arg("-c")
                    .arg(SCENARIO)
                    .arg("scenario")
                    .arg(root),
                common::COMMAND_TIMEOUT,
            );
            out.assert_success("scenario");
            out.stdout
        });
        assert!(
            plain.contains("./copy/app.log 1577934245.1234567890\n"),
            "plain directory: {plain}"
        );
        assert!(
            plain.contains("user.origin=\"host1\""),
            "plain directory: {plain}"
        );
        assert_eq!(
            mounted, plain,
            "output through the mount and on the plain directory"
        );
    });
}
