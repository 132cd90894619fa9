//! List with containerd filters, and streaming in batches.

use tonic::Code;

use crate::harness::Daemon;

const REF: &str = "containerd.io/snapshot.ref";

async fn names(d: &mut Daemon, filters: &[&str]) -> Vec<String> {
    d.list(filters).await.unwrap().0
}

#[tokio::test]
async fn filters() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path()).await;
    d.prepare("a", "").await.unwrap();
    d.commit_labels("sha256:aaa", "a", &[(REF, "sha256:aaa")])
        .await
        .unwrap();
    d.prepare("b", "sha256:aaa").await.unwrap();
    d.commit_labels("sha256:bbb", "b", &[(REF, "sha256:bbb"), ("x.y", "1")])
        .await
        .unwrap();
    d.prepare_labels("act", "sha256:bbb", &[("x.y", "2")])
        .await
        .unwrap();
    d.view("view", "sha256:aaa").await.unwrap();

    assert_eq!(
        names(&mut d, &[]).await,
        ["act", "sha256:aaa", "sha256:bbb", "view"]
    );
    // What containerd's metadata layer sends after AlreadyExists, bottom and upper layers.
    assert_eq!(
        names(
            &mut d,
            &[r#"labels."containerd.io/snapshot.ref"==sha256:aaa,parent=="""#]
        )
        .await,
        ["sha256:aaa"]
    );
    assert_eq!(
        names(
            &mut d,
            &[r#"labels."containerd.io/snapshot.ref"==sha256:bbb,parent=="sha256:aaa""#]
        )
        .await,
        ["sha256:bbb"]
    );
    assert!(
        names(
            &mut d,
            &[r#"labels."containerd.io/snapshot.ref"==sha256:bbb,parent=="""#]
        )
        .await
        .is_empty()
    );
    assert_eq!(names(&mut d, &["kind==active"]).await, ["act"]);
    assert_eq!(
        names(&mut d, &["kind==view", "name==act"]).await,
        ["act", "view"]
    );
    assert_eq!(
        names(&mut d, &["parent==sha256:aaa"]).await,
        ["sha256:bbb", "view"]
    );
    assert_eq!(
        names(&mut d, &[r#"labels."x.y""#]).await,
        ["act", "sha256:bbb"]
    );
    assert_eq!(
        names(&mut d, &[r#"labels."x.y"!=1"#]).await,
        ["act", "sha256:aaa", "view"]
    );
    assert_eq!(
        names(&mut d, &[r#"name~=^sha256:"#]).await,
        ["sha256:aaa", "sha256:bbb"]
    );
    assert_eq!(names(&mut d, &[r#"name=="vi\u0065w""#]).await, ["view"]);
    for bad in [
        "name==",
        "==x",
        r#"labels."unterminated"#,
        "name==a b",
        "name~=(",
    ] {
        assert_eq!(
            d.list(&[bad]).await.unwrap_err(),
            Code::InvalidArgument,
            "{bad}"
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn list_streams_in_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path()).await;
    for i in 0..250 {
        d.view(&format!("v{i:03}"), "").await.unwrap();
    }
    let (names, messages) = d.list(&[]).await.unwrap();
    assert_eq!(names.len(), 250);
    assert_eq!(messages, 3);
    d.stop().await;
}
