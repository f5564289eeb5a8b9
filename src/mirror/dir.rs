//! Directory mirror: replays journal ops into a directory on another disk or an NFS mount.
