//! RFC 822-style stanza files: dpkg's `status` database and debconf's `config.dat`.

/// One stanza: its fields in order, keys as written.
pub type Stanza = Vec<(String, String)>;

/// Split a control file into stanzas. Continuation lines (leading blank) are appended to the
/// previous field's value with a newline. Lines without a colon are skipped.
pub fn stanzas(text: &str) -> Vec<Stanza> {
    let mut out = Vec::new();
    let mut cur: Stanza = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A field of a stanza, key compared case-insensitively.
pub fn field<'a>(stanza: &'a Stanza, key: &str) -> Option<&'a str> {
    stanza
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// An installed package from `/var/lib/dpkg/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    pub version: String,
    /// `Architecture:` (`amd64`, `all`, ...); empty when the stanza has none.
    pub arch: String,
}

/// Packages whose status is `install ok installed` (or any `… installed` want state).
pub fn dpkg_installed(text: &str) -> Vec<Installed> {
    stanzas(text)
        .iter()
        .filter(|s| {
            field(s, "Status").is_some_and(|st| st.split_whitespace().nth(2) == Some("installed"))
        })
        .filter_map(|s| {
            Some(Installed {
                name: field(s, "Package")?.to_string(),
                version: field(s, "Version").unwrap_or("").to_string(),
                arch: field(s, "Architecture").unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// The value debconf's config database holds for a question, e.g.
/// `grub2/force_efi_extra_removable`.
pub fn debconf_value(config_dat: &str, question: &str) -> Option<String> {
    stanzas(config_dat)
        .iter()
        .find(|s| field(s, "Name") == Some(question))
        .and_then(|s| field(s, "Value").map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: grub-efi-amd64\nStatus: install ok installed\nVersion: 2.12-9+pmx2\nDescription: GRand\n multiline\n\nPackage: systemd-boot\nStatus: deinstall ok config-files\nVersion: 257.7-1\n\nPackage: shim-signed\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.47+pmx1+15.8-1+pmx1\n";

    #[test]
    fn installed_only() {
        let p = dpkg_installed(STATUS);
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["grub-efi-amd64", "shim-signed"]);
        assert_eq!(p[0].version, "2.12-9+pmx2");
        assert_eq!(p[0].arch, "");
        assert_eq!(p[1].arch, "amd64");
    }

    #[test]
    fn debconf() {
        let t = "Name: grub2/force_efi_extra_removable\nTemplate: grub2/force_efi_extra_removable\nValue: true\nOwners: grub-efi-amd64\nFlags: seen\n\nName: grub2/update_nvram\nValue: true\n";
        assert_eq!(
            debconf_value(t, "grub2/force_efi_extra_removable").as_deref(),
            Some("true")
        );
        assert_eq!(debconf_value(t, "grub-pc/install_devices"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panic(s in "\\PC{0,300}") {
            let _ = (dpkg_installed(&s), debconf_value(&s, "a/b"));
        }
    }
}
