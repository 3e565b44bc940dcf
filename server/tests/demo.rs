//! `ferrysync demo`, the README's "see it work" command, runs the story and converges.

use std::process::Command;

#[test]
fn demo_tells_the_story_and_converges() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrysync"))
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every record created offline got a server id through the id map.
    assert_eq!(text.matches("id map: company local").count(), 3, "{text}");
    assert_eq!(text.matches("id map: contact local").count(), 6, "{text}");
    // The later edit won on the server and on both devices; the deleted company is gone.
    assert!(
        text.lines()
            .any(|l| l.matches("ACME, Villeurbanne").count() == 3),
        "{text}"
    );
    assert!(!text.contains("Initech, Lyon"), "{text}");
    assert!(
        text.contains("the phone and the scanner hold the same data as the server"),
        "{text}"
    );
}
