//! Keeping secrets out of logs and errors: signed URL query strings, user-info in URLs, and
//! store options whose names say they hold a credential.

/// Option keys (lower-cased substrings) whose values are secrets.
const SECRET_KEYS: [&str; 8] = [
    "secret",
    "token",
    "password",
    "key",
    "sas",
    "credential",
    "signature",
    "session",
];

/// Whether an option named `key` holds a secret (`aws_secret_access_key`, `azure_storage_sas_key`,
/// `google_service_account_key`, ...). Region, endpoint and bucket names are not secrets.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| k.contains(s)) && !k.ends_with("_id") && k != "aws_access_key_id"
}

/// A URL safe to log: user-info replaced, query string and fragment dropped (a presigned
/// URL's signature lives there).
pub fn url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let had_query = u.query().is_some() || u.fragment().is_some();
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("redacted");
                let _ = u.set_password(None);
            }
            u.set_query(None);
            u.set_fragment(None);
            let mut s = u.to_string();
            if had_query {
                s.push_str("?<redacted>");
            }
            s
        }
        // Not a URL: cut at the first '?' to be safe.
        Err(_) => raw.split('?').next().map_or_else(String::new, |p| {
            if raw.contains('?') {
                format!("{p}?<redacted>")
            } else {
                p.to_owned()
            }
        }),
    }
}

/// Redacts every URL-looking word and `key=value` secret inside free text (error messages from
/// object stores can echo the request URL).
pub fn text(msg: &str) -> String {
    msg.split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_end();
            let tail = &word[trimmed.len()..];
            let core =
                trimmed.trim_matches(|c| matches!(c, '"' | '\'' | '(' | ')' | ',' | '<' | '>'));
            if core.contains("://") && (core.contains('?') || core.contains('@')) {
                format!("{}{tail}", trimmed.replace(core, &url(core)))
            } else if let Some((k, _)) = core.split_once('=') {
                if is_secret_key(k) {
                    format!("{k}=<redacted>{tail}")
                } else {
                    word.to_owned()
                }
            } else {
                word.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_urls_and_user_info_are_redacted() {
        let signed = "https://bucket.s3.amazonaws.com/m/model.onnx?X-Amz-Signature=abc123&X-Amz-Credential=AKIA";
        let r = url(signed);
        assert_eq!(r, "https://bucket.s3.amazonaws.com/m/model.onnx?<redacted>");
        assert!(!url("https://user:hunter2@host/x").contains("hunter2"));
        assert_eq!(url("s3://models/magika/3/"), "s3://models/magika/3/");
    }

    #[test]
    fn secrets_in_free_text_are_redacted() {
        let msg =
            "GET https://h/x?sig=SECRET1 failed; aws_secret_access_key=SECRET2 region=us-east-1";
        let r = text(msg);
        assert!(!r.contains("SECRET1") && !r.contains("SECRET2"), "{r}");
        assert!(r.contains("region=us-east-1"), "{r}");
    }

    #[test]
    fn secret_option_names() {
        for k in [
            "aws_secret_access_key",
            "AWS_SESSION_TOKEN",
            "azure_storage_sas_key",
            "google_service_account_key",
            "password",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "aws_access_key_id",
            "aws_region",
            "aws_endpoint",
            "allow_http",
            "azure_storage_account_name",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
