//! Debian version ordering (`dpkg --compare-versions`), used for kernels and packages.

use std::cmp::Ordering;

/// Compare two Debian versions (`[epoch:]upstream[-revision]`) the way dpkg does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

fn split(v: &str) -> (u64, &str, &str) {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), r)
        }
        _ => (0, v),
    };
    match rest.rfind('-') {
        Some(i) => (epoch, &rest[..i], &rest[i + 1..]),
        None => (epoch, rest, ""),
    }
}

/// dpkg's character weight: `~` sorts before everything, even the end of the string;
/// letters sort before non-letters.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // Non-digit prefix.
        loop {
            let (ca, cb) = (a.first().copied(), b.first().copied());
            let a_digit = ca.is_none_or(|c| c.is_ascii_digit());
            let b_digit = cb.is_none_or(|c| c.is_ascii_digit());
            if a_digit && b_digit {
                break;
            }
            let (wa, wb) = (weight(ca), weight(cb));
            if wa != wb {
                return wa.cmp(&wb);
            }
            a = a.get(1..).unwrap_or_default();
            b = b.get(1..).unwrap_or_default();
        }
        // Digit run, compared numerically without overflow.
        let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let na = trim_zeros(&a[..da]);
        let nb = trim_zeros(&b[..db]);
        let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[da..];
        b = &b[db..];
    }
    Ordering::Equal
}

/// The series `(major, minor)` of a kernel release (`6.8.12-4-pve` → `(6, 8)`).
pub fn kernel_series(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().splitn(3, ['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor_digits: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor_digits.parse().ok()?))
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let first = d.iter().position(|&c| c != b'0').unwrap_or(d.len());
    &d[first..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn dpkg_ordering() {
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1:0.1", "2.0", Greater),
            ("6.8.12-4-pve", "6.8.12-10-pve", Less),
            ("6.14.8-2-pve", "6.8.12-9-pve", Greater),
            ("9.0.11", "9.0.9", Greater),
            ("2.12-1+deb13u1", "2.12-1", Greater),
            ("1.0a", "1.0", Greater),
            ("1.0-1", "1.0+1-1", Less),
            ("99999999999999999999999", "1", Greater),
        ] {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn kernel_series_of_releases() {
        assert_eq!(kernel_series("6.8.12-4-pve"), Some((6, 8)));
        assert_eq!(kernel_series("6.14.8-2-pve"), Some((6, 14)));
        assert_eq!(kernel_series("7.0-rc1"), Some((7, 0)));
        assert_eq!(kernel_series("pve"), None);
    }

    proptest::proptest! {
        #[test]
        fn kernel_series_reads_major_minor(a in 0u32..100, b in 0u32..100, rest in "[-.][0-9a-z.-]{0,10}") {
            proptest::prop_assert_eq!(kernel_series(&format!("{a}.{b}{rest}")), Some((a, b)));
        }

        #[test]
        fn total_and_antisymmetric(a in ".{0,20}", b in ".{0,20}") {
            proptest::prop_assert_eq!(compare(&a, &b), compare(&b, &a).reverse());
        }
    }
}
