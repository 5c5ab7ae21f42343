import { useId, useState, type FormEvent } from "react";

import { describeError, isApiError } from "../api";
import { isAdmin } from "../auth";
import { useEnv } from "../env";
import { formatDateTime } from "../format";
import { useLoad } from "../hooks";
import { creditsText } from "../money";
import { CREDITS_PATH } from "../returnTo";
import {
  BOOLEAN_SWITCHES,
  FORCING_VARIABLES,
  draftOf,
  reasonProblem,
  switchChanges,
  type SwitchDraft,
} from "../switches";
import type { AdminFeatures, Pause, PausedUsers, ReconciliationRun, ReviewFlags } from "../types";
import { ErrorText, Loading, Section, TableWrap } from "./common";

function ForcedNote({ name, id }: { name: string; id: string }) {
  return (
    <span id={id} className="forced">
      Set by the deployment ({FORCING_VARIABLES[name] ?? name}); change it there.
    </span>
  );
}

function SwitchForm({
  features,
  onSaved,
}: {
  features: AdminFeatures;
  onSaved: (f: AdminFeatures) => void;
}) {
  const { api, announce } = useEnv();
  const formId = useId();
  const [draft, setDraft] = useState<SwitchDraft>(() => draftOf(features));
  // New switches from the server start a new draft, decided while rendering: an effect
  // would run after the first paint and could undo a change made before it.
  const [draftFrom, setDraftFrom] = useState(features);
  if (draftFrom !== features) {
    setDraftFrom(features);
    setDraft(draftOf(features));
  }
  const [reason, setReason] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  const [saving, setSaving] = useState(false);
  const forced = new Set(features.forced);
  const computed = switchChanges(features, draft);
  const changed = computed.ok && Object.keys(computed.changes).length > 0;

  async function submit(event: FormEvent) {
    event.preventDefault();
    if (!computed.ok) {
      setProblem(computed.problem);
      return;
    }
    const reasonIssue = reasonProblem(reason);
    if (reasonIssue) {
      setProblem(reasonIssue);
      return;
    }
    setSaving(true);
    setProblem(null);
    try {
      const saved = await api.json<AdminFeatures>("checkout", "/api/admin/features", {
        method: "PATCH",
        body: { ...computed.changes, reason: reason.trim() },
      });
      setReason("");
      onSaved(saved);
      announce("Switches updated.");
    } catch (caught) {
      setProblem(`The switches were not changed. ${describeError(caught)}`);
    } finally {
      setSaving(false);
    }
  }

  const field = (suffix: string) => `${formId}-${suffix}`;
  return (
    <form onSubmit={(e) => void submit(e)} data-testid="switch-form" noValidate>
      <fieldset>
        <legend>Billing switches</legend>
        <ul className="switches">
          {BOOLEAN_SWITCHES.map(({ name, label, hint }) => {
            const isForced = forced.has(name);
            return (
              <li key={name}>
                <div className="switch-row">
                  <input
                    id={field(name)}
                    type="checkbox"
                    role="switch"
                    checked={draft[name]}
                    disabled={isForced || saving}
                    aria-describedby={`${field(`${name}-hint`)}${isForced ? ` ${field(`${name}-forced`)}` : ""}`}
                    data-testid={`switch-${name}`}
                    onChange={(e) => setDraft({ ...draft, [name]: e.target.checked })}
                  />
                  <label htmlFor={field(name)}>{label}</label>
                </div>
                <p id={field(`${name}-hint`)} className="muted small">
                  {hint} Last changed:{" "}
                  {formatDateTime(features.updatedAt[name]) || "never (default)"}.
                </p>
                {isForced ? <ForcedNote name={name} id={field(`${name}-forced`)} /> : null}
              </li>
            );
          })}
        </ul>
        <div className="field">
          <label htmlFor={field("rollout")}>Rollout percentage</label>
          <input
            id={field("rollout")}
            type="number"
            inputMode="numeric"
            min={0}
            max={100}
            step={1}
            value={draft.rolloutPercentage}
            disabled={forced.has("rolloutPercentage") || saving}
            aria-describedby={forced.has("rolloutPercentage") ? field("rollout-forced") : undefined}
            data-testid="switch-rolloutPercentage"
            onChange={(e) => setDraft({ ...draft, rolloutPercentage: e.target.value })}
          />
          {forced.has("rolloutPercentage") ? (
            <ForcedNote name="rolloutPercentage" id={field("rollout-forced")} />
          ) : null}
        </div>
        <div className="field">
          <label htmlFor={field("allowlist")}>
            Shadow billing allowlist (one user id per line)
          </label>
          <textarea
            id={field("allowlist")}
            rows={3}
            value={draft.shadowAllowlist}
            disabled={forced.has("shadowAllowlist") || saving}
            aria-describedby={forced.has("shadowAllowlist") ? field("allowlist-forced") : undefined}
            data-testid="switch-shadowAllowlist"
            onChange={(e) => setDraft({ ...draft, shadowAllowlist: e.target.value })}
          />
          {forced.has("shadowAllowlist") ? (
            <ForcedNote name="shadowAllowlist" id={field("allowlist-forced")} />
          ) : null}
        </div>
      </fieldset>
      <div className="field">
        <label htmlFor={field("reason")}>Reason for the change (kept in the audit log)</label>
        <input
          id={field("reason")}
          type="text"
          value={reason}
          maxLength={500}
          required
          data-testid="switch-reason"
          onChange={(e) => setReason(e.target.value)}
        />
      </div>
      {problem ? (
        <p className="error" role="alert">
          {problem}
        </p>
      ) : null}
      <div className="actions">
        <button type="submit" className="button-primary" disabled={!changed || saving}>
          Apply changes
        </button>
        <button
          type="button"
          disabled={!changed || saving}
          onClick={() => {
            setDraft(draftOf(features));
            setProblem(null);
          }}
        >
          Undo changes
        </button>
      </div>
    </form>
  );
}

function SwitchesPanel() {
  const { api } = useEnv();
  const loaded = useLoad(
    (signal) => api.json<AdminFeatures>("checkout", "/api/admin/features", { signal }),
    "admin-features",
  );
  const [saved, setSaved] = useState<AdminFeatures | null>(null);
  const features = saved ?? loaded.data;
  return (
    <Section title="Switches" testId="admin-switches">
      {features ? (
        <SwitchForm features={features} onSaved={setSaved} />
      ) : loaded.error ? (
        <ErrorText error={loaded.error} prefix="The switches could not be loaded." />
      ) : (
        <Loading what="switches" />
      )}
    </Section>
  );
}

function amount(millicredits: number | null): string {
  return millicredits === null ? "—" : creditsText(millicredits);
}

function ReconciliationPanel() {
  const { api } = useEnv();
  const run = useLoad(
    (signal) =>
      api.json<ReconciliationRun>("reconciler", "/api/admin/reconciliation/latest", { signal }),
    "reconciliation",
  );
  let body;
  if (run.error && isApiError(run.error, "no_runs")) {
    body = <p className="muted">No reconciliation run has finished yet.</p>;
  } else if (run.error) {
    body = <ErrorText error={run.error} prefix="The latest reconciliation could not be loaded." />;
  } else if (!run.data) {
    body = <Loading what="the latest reconciliation" />;
  } else {
    const r = run.data;
    body = (
      <>
        <dl className="facts">
          <div>
            <dt>Status</dt>
            <dd
              data-testid="reconciliation-status"
              className={r.status === "clean" ? "ok" : "error"}
            >
              {r.status === "clean" ? "Clean" : `${r.findings.length} finding(s)`}
            </dd>
          </div>
          <div>
            <dt>Period</dt>
            <dd>
              {formatDateTime(r.period.from)} to {formatDateTime(r.period.to)}
            </dd>
          </div>
          <div>
            <dt>Finished</dt>
            <dd>
              {formatDateTime(r.finishedAt)} ({r.durationMs} ms)
            </dd>
          </div>
          <div>
            <dt>Stripe sessions seen</dt>
            <dd>{r.stripeApiSessionsSeen ?? "Stripe API not reached"}</dd>
          </div>
        </dl>
        {r.findings.length > 0 ? (
          <TableWrap label="Reconciliation findings">
            <table data-testid="findings-table">
              <caption>Findings of run {r.runId}</caption>
              <thead>
                <tr>
                  <th scope="col">Check</th>
                  <th scope="col">Kind</th>
                  <th scope="col">User</th>
                  <th scope="col" className="num">
                    Expected
                  </th>
                  <th scope="col" className="num">
                    Actual
                  </th>
                  <th scope="col">Detail</th>
                </tr>
              </thead>
              <tbody>
                {r.findings.map((f, i) => (
                  <tr key={`${f.check}-${i}`}>
                    <th scope="row">{f.check}</th>
                    <td>{f.kind}</td>
                    <td className="wrap">{f.userId ?? "—"}</td>
                    <td className="num">{amount(f.expectedMillicredits)}</td>
                    <td className="num">{amount(f.actualMillicredits)}</td>
                    <td className="wrap">
                      {f.detail}
                      {f.references.length > 0 ? ` (${f.references.join(", ")})` : ""}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </TableWrap>
        ) : (
          <p>No findings: money received, credits granted, credits spent and balances agree.</p>
        )}
      </>
    );
  }
  return (
    <Section title="Latest reconciliation" testId="admin-reconciliation">
      {body}
      <button type="button" onClick={run.reload}>
        Refresh reconciliation
      </button>
    </Section>
  );
}

function ReviewFlagsPanel() {
  const { api } = useEnv();
  const flags = useLoad(
    (signal) => api.json<ReviewFlags>("metering", "/api/admin/review-flags", { signal }),
    "review-flags",
  );
  return (
    <Section title="Review flags" testId="admin-review-flags">
      {flags.error ? (
        <ErrorText error={flags.error} prefix="Review flags could not be loaded." />
      ) : !flags.data ? (
        <Loading what="review flags" />
      ) : flags.data.flags.length === 0 ? (
        <p className="muted">No calls are flagged for review.</p>
      ) : (
        <TableWrap label="Review flags">
          <table data-testid="review-flags-table">
            <caption>Calls flagged by the anomaly breaker, newest first</caption>
            <thead>
              <tr>
                <th scope="col">Flagged</th>
                <th scope="col">User</th>
                <th scope="col">Model</th>
                <th scope="col" className="num">
                  Charge
                </th>
                <th scope="col" className="num">
                  Recent average
                </th>
                <th scope="col" className="num">
                  Recent calls
                </th>
              </tr>
            </thead>
            <tbody>
              {flags.data.flags.map((flag) => (
                <tr key={flag.id}>
                  <th scope="row" className="nowrap">
                    {formatDateTime(flag.createdAt)}
                  </th>
                  <td className="wrap">{flag.userId}</td>
                  <td>{flag.model}</td>
                  <td className="num">{creditsText(flag.chargeMillicredits)}</td>
                  <td className="num">{creditsText(flag.averageMillicredits)}</td>
                  <td className="num">{flag.recentCalls}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      )}
    </Section>
  );
}

function ResumeCell({ pause, onResumed }: { pause: Pause; onResumed: () => void }) {
  const { api, announce } = useEnv();
  const inputId = useId();
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [problem, setProblem] = useState<string | null>(null);

  async function resume() {
    if (!reason.trim()) {
      setProblem("Give a reason for resuming; it is kept in the audit log.");
      return;
    }
    setBusy(true);
    setProblem(null);
    try {
      await api.json<Pause>(
        "metering",
        `/api/admin/users/${encodeURIComponent(pause.userId)}/resume`,
        { method: "POST", body: { reason: reason.trim() } },
      );
      announce(`${pause.userId} resumed.`);
      onResumed();
    } catch (caught) {
      setProblem(`${pause.userId} was not resumed. ${describeError(caught)}`);
      setBusy(false);
    }
  }

  return (
    <div className="resume">
      <label htmlFor={inputId} className="visually-hidden">
        Reason for resuming {pause.userId}
      </label>
      <input
        id={inputId}
        type="text"
        placeholder="Reason"
        value={reason}
        maxLength={500}
        onChange={(e) => setReason(e.target.value)}
      />
      <button type="button" disabled={busy} onClick={() => void resume()}>
        Resume {pause.userId}
      </button>
      {problem ? (
        <p className="error small" role="alert">
          {problem}
        </p>
      ) : null}
    </div>
  );
}

function PausedUsersPanel() {
  const { api } = useEnv();
  const users = useLoad(
    (signal) => api.json<PausedUsers>("metering", "/api/admin/paused-users", { signal }),
    "paused-users",
  );
  const paused = users.data?.users.filter((u) => u.paused) ?? [];
  return (
    <Section title="Paused users" testId="admin-paused-users">
      {users.error ? (
        <ErrorText error={users.error} prefix="Paused users could not be loaded." />
      ) : !users.data ? (
        <Loading what="paused users" />
      ) : paused.length === 0 ? (
        <p className="muted">No user is paused.</p>
      ) : (
        <TableWrap label="Paused users">
          <table data-testid="paused-users-table">
            <caption>Users paused by the session cap</caption>
            <thead>
              <tr>
                <th scope="col">User</th>
                <th scope="col">Paused</th>
                <th scope="col">Why</th>
                <th scope="col">Resume</th>
              </tr>
            </thead>
            <tbody>
              {paused.map((pause) => (
                <tr key={pause.userId}>
                  <th scope="row" className="wrap">
                    {pause.userId}
                  </th>
                  <td className="nowrap">{formatDateTime(pause.pausedAt)}</td>
                  <td className="wrap">{pause.reason ?? ""}</td>
                  <td>
                    <ResumeCell pause={pause} onResumed={users.reload} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      )}
    </Section>
  );
}

export function AdminPage() {
  const { claims } = useEnv();
  if (!isAdmin(claims)) {
    return (
      <>
        <h1>Operator admin</h1>
        <p data-testid="admin-forbidden">
          This view is for operators with the admin role.{" "}
          <a href={CREDITS_PATH}>Go to your credits</a>.
        </p>
      </>
    );
  }
  return (
    <>
      <h1>Operator admin</h1>
      <SwitchesPanel />
      <ReconciliationPanel />
      <ReviewFlagsPanel />
      <PausedUsersPanel />
    </>
  );
}
