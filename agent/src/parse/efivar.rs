//! efivarfs variables: 4 bytes of little-endian attributes, then the data.

/// The integer value of a boolean-ish EFI variable (`SecureBoot`, `SetupMode`).
/// Data of 1, 2 or 4 bytes is read little-endian, as mokutil does; anything else is `Err`.
pub fn int_value(bytes: &[u8]) -> Result<u32, String> {
    let data = bytes.get(4..).ok_or_else(|| {
        format!(
            "{} bytes, shorter than the 4-byte attribute header",
            bytes.len()
        )
    })?;
    match data.len() {
        1 | 2 | 4 => Ok(data
            .iter()
            .rev()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b))),
        n => Err(format!("strange data size {n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(int_value(&[6, 0, 0, 0, 1]), Ok(1));
        assert_eq!(int_value(&[6, 0, 0, 0, 0]), Ok(0));
        assert_eq!(int_value(&[6, 0, 0, 0, 1, 0]), Ok(1));
        assert!(int_value(&[6, 0, 0]).is_err());
        assert!(int_value(&[6, 0, 0, 0, 1, 0, 0]).is_err());
    }
}
