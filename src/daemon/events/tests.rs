//! Tests of the event path over the stateful fakes, in paused time.

use std::sync::Arc;

use super::*;
use crate::daemon::state::StateDb;
use crate::fake::accounts::FakeAccounts;
use crate::fake::FakeArm;
use crate::fake::{FakeAws, FakeQueue, FAKE_ACCOUNT};
use crate::model::{InstanceState, Platform};

const CONFIG: &str = "[aws]\nregions = [\"us-east-1\"]\ntag_filter = { key = \"arc\", value = \"onboard\" }\n[events]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/123456789012/q\"\n[azure]\ntenant_id = \"00000000-0000-0000-0000-000000000001\"\nsubscription_id = \"00000000-0000-0000-0000-000000000002\"\nclient_id = \"00000000-0000-0000-0000-000000000003\"\nlocation = \"eastus\"\n";

fn running(id: &str) -> String {
    serde_json::json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
        "account": FAKE_ACCOUNT, "region": "us-east-1", "resources": [],
        "detail": {"instance-id": id, "state": "running"}})
    .to_string()
}

struct Fixture {
    aws: Arc<FakeAws>,
    /// The organization: the caller's account (`aws`) alone unless a test adds members.
    org: FakeAccounts,
    /// `--shard` of the event path.
    shard: Option<Shard>,
    arm: Arc<FakeArm>,
    queue: FakeQueue,
    db: StateDb,
    _dir: tempfile::TempDir,
    config: Config,
}

async fn fixture() -> Fixture {
    let aws = Arc::new(FakeAws::new(&["us-east-1"]));
    let arm = Arc::new(FakeArm::default());
    aws.link_arm(arm.clone(), "aws_123456789012");
    aws.add_role(
        "AppRole",
        &[crate::config::SSM_POLICY_ARN],
        Some("AppProfile"),
    );
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(&dir.path().join("state.db")).await.unwrap();
    let org = FakeAccounts::new(FAKE_ACCOUNT);
    org.add_account(FAKE_ACCOUNT, (*aws).clone());
    Fixture {
        aws,
        org,
        shard: None,
        arm,
        queue: FakeQueue::default(),
        db,
        _dir: dir,
        config: Config::parse(CONFIG, std::path::Path::new("t")).unwrap(),
    }
}

impl Fixture {
    /// A running instance of the caller's account with the SSM profile and the tag in scope.
    fn tagged(&self, region: &str, id: &str) {
        let (linux, running) = (Platform::Linux, InstanceState::Running);
        let tag = [("arc", "onboard")];
        self.aws
            .add_instance(region, id, linux, running, Some("AppProfile"), &tag);
    }
}

/// Runs the event path over the fixture for `secs` of (paused) time.
async fn run_for(f: &Fixture, secs: u64) -> Arc<Metrics> {
    let opts = EventOptions {
        shard: f.shard,
        ..EventOptions::default()
    };
    let shutdown = tokio::time::sleep(Duration::from_secs(secs));
    run_events(f, &Leases::new(), &opts, shutdown).await
}

/// Runs the event path over the fixture (its state file, `leases`, `opts`) until `shutdown`.
async fn run_events(
    f: &Fixture,
    leases: &Leases,
    opts: &EventOptions,
    shutdown: impl Future<Output = ()>,
) -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::new(3));
    let token = MutationToken::mint();
    let durable = Durable {
        memory: &f.db,
        retry_base: Duration::from_secs(900),
        retry_max: Duration::from_secs(86_400),
    };
    let ctx = EventContext {
        config: &f.config,
        token: &token,
        durable: &durable,
        metrics: &metrics,
        leases,
    };
    let ports = EventPorts {
        accounts: &f.org,
        arm: &*f.arm,
        queue: &f.queue,
    };
    run(&ctx, &ports, opts, shutdown).await;
    metrics
}

/// `arc_onboard_events_total{result}`. Every result's series is exported from the start (at 0), so a
/// missing series is a defect and panics instead of reading as 0.
fn count(metrics: &Metrics, result: &str) -> u64 {
    let text = metrics.render();
    let series = format!("arc_onboard_events_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series}in:\n{text}"))
}

#[tokio::test(start_paused = true)]
async fn an_event_onboards_its_instance_and_its_message_goes_once_it_is_recorded() {
    let f = fixture().await;
    f.tagged("us-east-1", "i-1");
    f.queue.send(&running("i-1"));
    let metrics = run_for(&f, 60).await;
    assert!(f.queue.is_empty(), "the message was deleted");
    assert_eq!(count(&metrics, "accepted"), 1);
    let records = f.db.all().await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, Status::Onboarded, "{records:?}");
    assert_eq!(
        f.aws.calls.count("ssm:SendCommand"),
        2,
        "a key exchange, then the install"
    );
}

#[tokio::test(start_paused = true)]
async fn malformed_other_and_out_of_scope_messages_are_deleted_and_counted() {
    let f = fixture().await;
    f.aws.add_instance(
        "us-east-1",
        "i-untagged",
        Platform::Linux,
        InstanceState::Running,
        Some("AppProfile"),
        &[],
    );
    f.queue.send("garbage");
    f.queue.send(&running("i-untagged"));
    f.queue.send(&running("i-unknown"));
    f.queue
        .send(&running("i-1").replace(FAKE_ACCOUNT, "210987654321"));
    f.queue
        .send(&running("i-1").replace("\"running\"", "\"stopped\""));
    let metrics = run_for(&f, 30).await;
    assert!(f.queue.is_empty());
    assert_eq!(count(&metrics, "malformed"), 1);
    assert_eq!(count(&metrics, "out-of-scope"), 3);
    assert_eq!(count(&metrics, "ignored"), 1);
    assert_eq!(count(&metrics, "accepted"), 0, "none of them is onboarded");
    assert!(f.db.all().await.unwrap().is_empty(), "nothing recorded");
    assert_eq!(f.aws.calls.count("ssm:SendCommand"), 0);
}

#[tokio::test(start_paused = true)]
async fn instances_without_a_profile_get_it_at_once_and_a_burst_shares_its_commands() {
    let f = fixture().await;
    for n in 0..60 {
        let id = format!("i-{n:03}");
        f.aws.add_instance(
            "us-east-1",
            &id,
            Platform::Linux,
            InstanceState::Running,
            None,
            &[("arc", "onboard")],
        );
        f.queue.send(&running(&id));
    }
    let metrics = run_for(&f, 120).await;
    assert!(f.queue.is_empty());
    assert_eq!(count(&metrics, "accepted"), 60);
    assert_eq!(f.aws.calls.count("ec2:AssociateIamInstanceProfile"), 60);
    let records = f.db.all().await.unwrap();
    assert!(
        records.iter().all(|r| r.status == Status::Onboarded),
        "{records:?}"
    );
    // 60 instances Online together: the batch minimum is 2 commands (50 + 10).
    assert_eq!(
        f.aws.calls.count("ssm:SendCommand"),
        4,
        "two batches, two commands each"
    );
    // The watcher asks about them together, not one by one.
    let polls = f.aws.calls.count("ssm:DescribeInstanceInformation");
    assert!(polls <= 30, "{polls} SSM polls for 60 instances");
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_event_while_the_instance_is_handled_sends_no_second_install() {
    let f = fixture().await;
    f.tagged("us-east-1", "i-1");
    for _ in 0..3 {
        f.queue.send(&running("i-1"));
    }
    let metrics = run_for(&f, 60).await;
    assert!(f.queue.is_empty());
    assert_eq!(count(&metrics, "accepted"), 3);
    assert_eq!(
        f.aws.calls.count("ssm:SendCommand"),
        2,
        "one batch: a key exchange, then the install"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_queue_is_reported_and_the_loop_goes_on() {
    let f = fixture().await;
    f.queue.delete_queue();
    let metrics = run_for(&f, 30).await;
    assert!(!metrics.healthy());
    assert!(metrics
        .queue_problem()
        .unwrap()
        .contains("NonExistentQueue"));
    let receives = f.queue.calls.count("sqs:ReceiveMessage");
    assert!(
        (3..=10).contains(&receives),
        "retried with backoff: {receives}"
    );
}

#[test]
fn poll_interval_backs_off_with_the_wait() {
    assert_eq!(poll_interval(Duration::ZERO), Duration::from_secs(1));
    assert_eq!(
        poll_interval(Duration::from_secs(45)),
        Duration::from_secs(2)
    );
    assert_eq!(
        poll_interval(Duration::from_secs(90)),
        Duration::from_secs(10)
    );
    assert_eq!(
        poll_interval(Duration::from_secs(600)),
        Duration::from_secs(30)
    );
}

#[test]
fn full_commands_go_at_once_and_the_rest_waits_while_more_are_coming() {
    let opts = EventOptions::default();
    let now = Instant::now();
    let key: Key = (FAKE_ACCOUNT.into(), "us-east-1".into());
    let mut tracker = Tracker::default();
    tracker.watch(&key, "i-still-waiting", now);
    for n in 0..52 {
        tracker.make_ready(&key, &format!("i-{n:03}"), now);
    }
    let (batches, next) = tracker.closable(now, &opts);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].1.len(), 50, "one full command");
    assert_eq!(tracker.ready[&key].ids.len(), 2, "the rest waits");
    assert_eq!(next, Some(now + opts.batch_quiet));
    assert!(tracker.in_hand(&key, "i-000") && tracker.in_hand(&key, "i-051"));
    // Quiet for long enough: the rest goes too.
    let (batches, _) = tracker.closable(now + opts.batch_quiet, &opts);
    assert_eq!(batches[0].1.len(), 2);
    assert!(tracker.ready.is_empty());
    // Nothing being watched: a lone instance goes after the short linger.
    let mut tracker = Tracker::default();
    tracker.make_ready(&key, "i-lone", now);
    assert!(tracker.closable(now, &opts).0.is_empty());
    assert_eq!(tracker.closable(now + opts.batch_linger, &opts).0.len(), 1);
}

#[test]
fn with_nothing_watched_a_batch_fills_within_the_linger_instead_of_splitting() {
    let opts = EventOptions::default();
    let now = Instant::now();
    let key: Key = (FAKE_ACCOUNT.into(), "eu-west-1".into());
    let mut tracker = Tracker::default();
    tracker.make_ready(&key, "i-a", now);
    let (batches, next) = tracker.closable(now, &opts);
    assert!(
        batches.is_empty(),
        "a lone instance waits for the rest of a burst"
    );
    assert_eq!(next, Some(now + opts.batch_linger));
    // Another of the burst joins within the linger: the window runs from the last newcomer.
    let later = now + opts.batch_linger / 2;
    tracker.make_ready(&key, "i-b", later);
    let (batches, next) = tracker.closable(later, &opts);
    assert!(batches.is_empty());
    assert_eq!(next, Some(later + opts.batch_linger));
    let (batches, _) = tracker.closable(later + opts.batch_linger, &opts);
    assert_eq!(
        batches,
        vec![(key.clone(), vec!["i-a".to_string(), "i-b".to_string()])]
    );
    // A trickle never holds a batch past batch_max_wait.
    let mut tracker = Tracker::default();
    let mut t = now;
    let mut closed = Vec::new();
    while closed.is_empty() {
        tracker.make_ready(&key, &format!("i-{}", (t - now).as_millis()), t);
        closed = tracker.closable(t, &opts).0;
        t += opts.batch_linger / 2;
    }
    assert!(
        t - now <= opts.batch_max_wait + opts.batch_linger,
        "{:?}",
        t - now
    );
}

#[test]
fn registration_polls_of_a_burst_go_in_rounds() {
    let now = Instant::now();
    let key: Key = (FAKE_ACCOUNT.into(), "us-east-1".into());
    let mut tracker = Tracker::default();
    // Three intakes of one burst, 300 ms apart, each hand in one instance.
    for (n, ms) in [0u64, 300, 600].into_iter().enumerate() {
        tracker.watch(&key, &format!("i-{n}"), now + Duration::from_millis(ms));
    }
    assert_eq!(
        tracker.next_poll(),
        Some(now + poll_interval(Duration::ZERO))
    );
    // The first comes due: the other two are asked about in the same call.
    let first_due = tracker.next_poll().unwrap();
    let (work, given_up) = tracker.due(first_due, Duration::from_secs(900));
    assert!(given_up.is_empty());
    assert_eq!(
        work,
        vec![(
            key.clone(),
            vec!["i-0".to_string(), "i-1".to_string(), "i-2".to_string()]
        )]
    );
}

#[test]
fn at_most_the_free_install_slots_are_taken_and_the_rest_stays_ready() {
    let opts = EventOptions::default();
    let now = Instant::now();
    let mut tracker = Tracker::default();
    let keys: Vec<Key> = ["us-east-1", "eu-west-1", "ap-south-1"]
        .iter()
        .map(|r| (FAKE_ACCOUNT.to_string(), r.to_string()))
        .collect();
    for key in &keys {
        tracker.make_ready(key, "i-1", now);
    }
    // Nothing else is watched: each batch may close once its linger is over.
    let due = now + opts.batch_linger;
    assert!(tracker.closable_at_most(due, &opts, 0).0.is_empty());
    let (batches, _) = tracker.closable_at_most(due, &opts, 2);
    assert_eq!(batches.len(), 2);
    assert_eq!(tracker.ready.len(), 1, "the third waits for a free slot");
    assert_eq!(tracker.closable_at_most(due, &opts, 5).0.len(), 1);
    assert!(tracker.ready.is_empty());
}

#[tokio::test(start_paused = true)]
async fn event_installs_beyond_the_bound_wait_for_a_running_one_to_end() {
    let mut f = fixture().await;
    f.config = Config::parse(
        &CONFIG.replace("[\"us-east-1\"]", "[\"us-east-1\", \"eu-west-1\"]"),
        std::path::Path::new("t"),
    )
    .unwrap();
    for (region, id) in [("us-east-1", "i-0a"), ("eu-west-1", "i-0b")] {
        f.tagged(region, id);
        // Both installs run until the test ends.
        f.aws.script_outcome(id, "InProgress", "InProgress", -1, "");
        f.queue
            .send(&running(id).replace("\"us-east-1\"", &format!("\"{region}\"")));
    }
    let opts = EventOptions {
        max_installs: 1,
        shutdown_grace: Duration::from_secs(1),
        ..EventOptions::default()
    };
    let shutdown = tokio::time::sleep(Duration::from_secs(120));
    run_events(&f, &Leases::new(), &opts, shutdown).await;
    let records = f.db.all().await.unwrap();
    assert_eq!(records.len(), 2, "both events taken: {records:?}");
    assert_eq!(f.aws.commands().len(), 1, "one install at a time");
}

/// The caller's account (even: shard 0/2) and members: one plain, one whose role is refused, one
/// excluded, and one of shard 1/2.
const MEMBER: &str = "200000000002";
const DENIED: &str = "200000000004";
const EXCLUDED: &str = "200000000006";
const OTHER_SHARD: &str = "200000000001";

/// The fixture as an organization: every member holds a tagged running instance `i-{account}`.
async fn organization() -> Fixture {
    let mut f = fixture().await;
    f.config = Config::parse(
        &CONFIG.replace(
            "[events]",
            "[aws.accounts]\nsource = \"organization\"\nexclude = [\"200000000006\"]\n[events]",
        ),
        std::path::Path::new("t"),
    )
    .unwrap();
    for id in [MEMBER, DENIED, EXCLUDED, OTHER_SHARD] {
        let aws = FakeAws::new(&["us-east-1"]).with_account(id);
        aws.add_role(
            "AppRole",
            &[crate::config::SSM_POLICY_ARN],
            Some("AppProfile"),
        );
        aws.add_instance(
            "us-east-1",
            &format!("i-{id}"),
            Platform::Linux,
            InstanceState::Running,
            Some("AppProfile"),
            &[("arc", "onboard")],
        );
        aws.link_arm(f.arm.clone(), &format!("aws_{id}"));
        f.org.add_account(id, aws);
    }
    f.org.deny_assume_role(DENIED);
    f.shard = Some(Shard { index: 0, count: 2 });
    f
}

fn running_in(account: &str) -> String {
    running(&format!("i-{account}")).replace(FAKE_ACCOUNT, account)
}

#[tokio::test(start_paused = true)]
async fn member_events_are_handled_in_their_account_and_the_rest_as_documented() {
    let f = organization().await;
    for account in [MEMBER, DENIED, EXCLUDED, OTHER_SHARD] {
        f.queue.send(&running_in(account));
    }
    f.queue.send(&running_in(DENIED));
    let metrics = run_for(&f, 60).await;
    // The member's instance: onboarded in the member's account, its message deleted.
    assert_eq!(count(&metrics, "accepted"), 1);
    let member = f.org.account(MEMBER);
    assert_eq!(
        member.calls.count("ssm:SendCommand"),
        2,
        "a key exchange, then the install"
    );
    let records = f.db.all().await.unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (records[0].account_id.as_str(), records[0].status.as_str()),
        (MEMBER, "onboarded")
    );
    // The refused role: both messages deleted, one AssumeRole for the two of them.
    assert_eq!(count(&metrics, "account-unreachable"), 2);
    assert_eq!(
        f.org.calls.count("sts:AssumeRole"),
        2,
        "MEMBER and DENIED once each"
    );
    // The excluded account: deleted, no call in it.
    assert_eq!(count(&metrics, "out-of-scope"), 1);
    assert!(f.org.account(EXCLUDED).calls.snapshot().is_empty());
    // Another shard's account: left on the queue, untouched.
    assert_eq!(count(&metrics, "other-shard"), 1);
    assert_eq!(f.queue.len(), 1, "only the other shard's message is left");
    assert!(f.org.account(OTHER_SHARD).calls.snapshot().is_empty());
}

#[tokio::test(start_paused = true)]
async fn with_the_organization_unlisted_member_events_are_left_for_redelivery() {
    let f = organization().await;
    f.org.deny_organization();
    f.queue.send(&running_in(MEMBER));
    f.queue.send(&running_in(EXCLUDED));
    let metrics = run_for(&f, 30).await;
    assert_eq!(count(&metrics, "retry"), 2, "neither can be told in or out");
    assert_eq!(count(&metrics, "out-of-scope"), 0);
    assert_eq!(f.queue.len(), 2, "both left on the queue");
    assert!(f.org.account(MEMBER).calls.snapshot().is_empty());
}

/// One pass of the fixture's config over `aws` (an account of its own), in `scope`, holding `leases`.
async fn pass_over(
    f: &Fixture,
    aws: &FakeAws,
    scope: Scope,
    leases: &Arc<Leases>,
    durable: &Durable<'_>,
) -> crate::reconcile::pass::PassOutcome {
    let ports = aws.ports();
    let mut opts = PassOptions::default();
    opts.apply.wait_for_ssm = Duration::ZERO;
    opts.scope = scope;
    opts.leases = Some(leases.clone());
    let token = MutationToken::mint();
    crate::reconcile::pass::run_pass(
        &f.config,
        &ports,
        Some(&*f.arm),
        Some(&token),
        &opts,
        Some(durable),
        SystemTime::now(),
    )
    .await
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_event_install_held_open_in_one_account_does_not_hold_up_an_iam_pass_of_another() {
    const OTHER_ACCOUNT: &str = "210987654321";
    let f = fixture().await;
    let tag = [("arc", "onboard")];
    // The caller's account: an event for i-1, whose install command runs until the test ends.
    f.tagged("us-east-1", "i-1");
    f.aws
        .script_outcome("i-1", "InProgress", "InProgress", -1, "");
    f.queue.send(&running("i-1"));
    // Another account: an instance without a profile, for its IAM pass.
    let member = FakeAws::new(&["us-east-1"]).with_account(OTHER_ACCOUNT);
    member.add_instance(
        "us-east-1",
        "i-m",
        Platform::Linux,
        InstanceState::Running,
        None,
        &tag,
    );
    let leases = Arc::new(Leases::new());
    let durable = Durable {
        memory: &f.db,
        retry_base: Duration::from_secs(900),
        retry_max: Duration::from_secs(86_400),
    };
    let opts = EventOptions {
        shutdown_grace: Duration::from_secs(1),
        ..EventOptions::default()
    };
    let stop = Notify::new();
    let events = run_events(&f, &leases, &opts, stop.notified());
    let test = async {
        while f.aws.commands().is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // The install is sent and tracked; it holds its account's lease. The other account's IAM pass
        // runs to its end meanwhile.
        let iam = Scope {
            iam: true,
            install: false,
        };
        let pass = tokio::time::timeout(
            Duration::from_secs(60),
            pass_over(&f, &member, iam, &leases, &durable),
        )
        .await
        .expect("the IAM pass of the other account completed");
        let row = &pass.report.instances[0];
        assert_eq!(row.instance_id, "i-m");
        assert_eq!(
            row.status,
            Status::WaitingForSsm,
            "{}",
            pass.report.to_json()
        );
        assert_eq!(member.calls.count("ec2:AssociateIamInstanceProfile"), 1);
        let held = f.db.all().await.unwrap();
        let rec = held.iter().find(|r| r.instance_id == "i-1").unwrap();
        assert_eq!(rec.status, Status::InProgress, "the install is still open");
        // A pass of the install's own account waits for the install.
        let own = pass_over(&f, &f.aws, iam, &leases, &durable);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), own)
                .await
                .is_err(),
            "a pass of the account with an install in flight waits for it"
        );
        stop.notify_one();
    };
    tokio::join!(events, test);
    assert_eq!(f.aws.commands().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_state_write_is_counted_in_the_metrics_and_nothing_is_sent() {
    use crate::fake::FakeMemory;
    use crate::reconcile::onboard::JOURNAL_FAILED;
    let f = fixture().await;
    for id in ["i-1", "i-2"] {
        f.tagged("us-east-1", id);
    }
    let memory = FakeMemory::new();
    memory.fail_writes(true);
    let durable = Durable {
        memory: &memory,
        retry_base: Duration::from_secs(60),
        retry_max: Duration::from_secs(600),
    };
    let leases = Arc::new(Leases::new());
    let outcome = pass_over(&f, &f.aws, Scope::default(), &leases, &durable).await;
    assert!(f.aws.commands().is_empty(), "no install sent");
    let summary = crate::daemon::PassSummary::from_outcome(&outcome);
    assert_eq!(
        summary.errors.get(JOURNAL_FAILED),
        Some(&2),
        "{:?}",
        summary.errors
    );
    let metrics = Metrics::new(3);
    metrics.record_pass(
        crate::daemon::PassKind::Onboarding,
        summary.ok,
        Duration::from_secs(1),
        &summary.status_labels(),
        &summary.api_calls,
        &summary.errors,
    );
    let line = format!("arc_onboard_errors_total{{code=\"{JOURNAL_FAILED}\"}} 2");
    let rendered = metrics.render();
    assert!(rendered.lines().any(|l| l == line), "{rendered}");
}

#[tokio::test(start_paused = true)]
async fn the_intake_records_the_planners_rows_as_they_are() {
    let f = fixture().await;
    let tags = &[("arc", "onboard")];
    let state = InstanceState::Running;
    // i-bare needs IAM (no profile), i-ready is Online in SSM at once.
    f.aws
        .add_instance("us-east-1", "i-bare", Platform::Linux, state, None, tags);
    let profile = Some("AppProfile");
    f.aws.add_instance(
        "us-east-1",
        "i-ready",
        Platform::Linux,
        state,
        profile,
        tags,
    );
    // What the planner says of them at intake (IAM-only scope, the intake stage).
    let ids = ["i-bare".to_string(), "i-ready".to_string()];
    let arc = observe_arc(&*f.arm, "aws_123456789012").await;
    let aws = &*f.aws;
    let obs = observe_instances(
        FAKE_ACCOUNT,
        "us-east-1",
        &ids,
        &f.config,
        (aws, aws, aws),
        crate::reconcile::observe::InFlightWindow::ending_at(
            std::time::SystemTime::now(),
            Duration::from_secs(3600),
        ),
        arc,
    )
    .await;
    let memory = crate::reconcile::plan::Memory::none();
    let planned = crate::reconcile::plan::plan_account(&obs, &f.config, &memory)
        .scoped(Scope {
            iam: true,
            install: false,
        })
        .for_event(EventStage::Intake);
    assert!(planned.batches.is_empty(), "the intake installs nothing");
    for id in ["i-bare", "i-ready"] {
        f.queue.send(&running(id));
    }
    // One second: the intake is done; nothing has come due for the installer yet.
    run_for(&f, 1).await;
    assert!(f.queue.is_empty());
    let records = f.db.all().await.unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    for row in &planned.instances {
        let rec = records
            .iter()
            .find(|r| r.instance_id == row.instance_id)
            .unwrap();
        assert_eq!(row.status, Status::WaitingForSsm, "{row:?}");
        assert_eq!(
            (rec.status.as_str(), rec.detail.as_str()),
            (row.status.as_str(), row.detail.as_str()),
            "the record is the planner's row"
        );
    }
    let detail = |id: &str| {
        let r = planned.instances.iter().find(|r| r.instance_id == id);
        r.unwrap().detail.clone()
    };
    assert_eq!(
        detail("i-bare"),
        "event: IAM in place; waiting for SSM registration, then the agent is installed"
    );
    assert_eq!(
        detail("i-ready"),
        "event: Online in SSM; the agent install is queued"
    );
    assert_eq!(f.aws.calls.count("ssm:SendCommand"), 0);
}
