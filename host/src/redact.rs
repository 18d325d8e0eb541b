//! Service URLs (PostgreSQL, SQLite, Redis) as logs and error messages show
//! them: with the user name, without the password. Shared by the store, the
//! limiter's Redis mode and the CLI, so it belongs to none of them.

/// The URL without its password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(
            redact("redis://:pw@127.0.0.1:6379/0"),
            "redis://@127.0.0.1:6379/0"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
