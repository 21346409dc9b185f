//! proxmox-boot-tool's vocabulary (package proxmox-kernel-helper): the paths it uses and its
//! test for an ESP's volume id. Shared by `collect` (which reads these files) and `rules`
//! (which judge them).

/// The kernel hook that syncs a newly installed kernel to the ESPs.
pub const KERNEL_HOOK: &str = "/etc/kernel/postinst.d/zz-proxmox-boot";
/// The ESP list when the helper's `functions` file names no other (`ESP_LIST=`).
pub const DEFAULT_ESP_LIST: &str = "/etc/kernel/proxmox-boot-uuids";

/// The helper's shell library, which sets `ESP_LIST`.
pub const HELPER_FUNCTIONS: &str = "/usr/share/proxmox-kernel-helper/scripts/functions";

/// proxmox-boot-tool's (unanchored) test for a VFAT volume id.
pub fn is_vfat_id(s: &str) -> bool {
    s.as_bytes()
        .windows(9)
        .any(|w| w[4] == b'-' && w[..4].iter().chain(&w[5..]).all(u8::is_ascii_hexdigit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfat_ids_anywhere_in_the_line() {
        assert!(is_vfat_id("3F2A-91C4"));
        assert!(is_vfat_id("  3f2a-91c4 trailing"));
        assert!(!is_vfat_id("not-a-uuid"));
        assert!(!is_vfat_id("3F2A91C4"));
        assert!(!is_vfat_id(""));
        assert!(!is_vfat_id("ü3F2A-91C"));
    }
}
