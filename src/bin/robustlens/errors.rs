//! How the binary shows a failure: the error chain in one line, a bad setting as its flag.

/// The message of an error chain, with a bad setting shown as its flag (`--lr 0: ...`), and
/// the exit status: 130 for an interrupted run, 1 otherwise.
pub fn report(e: &anyhow::Error) -> (String, i32) {
    let mut parts = Vec::new();
    let mut code = 1;
    for cause in e.chain() {
        match cause.downcast_ref::<robustlens::Error>() {
            Some(robustlens::Error::Interrupted { resume }) => {
                code = 130;
                parts.push(match resume {
                    Some(d) => format!(
                        "interrupted: checkpoint written to {}; continue with --resume {}",
                        d.display(),
                        d.display()
                    ),
                    None => {
                        "interrupted: checkpoints written; run the same command again to continue"
                            .into()
                    }
                });
            }
            Some(le) => match le.setting() {
                Some(s) => parts.push(s.render("--")),
                None => parts.push(le.to_string()),
            },
            None => parts.push(cause.to_string()),
        }
        // A library error prints its whole message; its sources are part of it.
        if cause.downcast_ref::<robustlens::Error>().is_some() {
            break;
        }
    }
    (parts.join(": "), code)
}

#[cfg(test)]
mod tests {
    use super::report;

    #[test]
    fn settings_are_shown_as_flags_and_interrupts_exit_130() {
        let e = robustlens::adversarial::Pgd::evaluation(0.0, 3)
            .validate()
            .unwrap_err();
        let e = anyhow::Error::from(e).context("evaluate");
        assert_eq!(
            report(&e),
            ("evaluate: --eps 0: must be a number > 0".into(), 1)
        );
        let e = anyhow::Error::from(robustlens::Error::Interrupted {
            resume: Some("models/x".into()),
        });
        let (msg, code) = report(&e);
        assert_eq!(code, 130);
        assert!(msg.contains("--resume models/x"), "{msg}");
    }
}
