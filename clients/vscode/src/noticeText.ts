// The words of agents' toasts, pure so that they are unit-tested.
import type { NoticeNotification } from "./protocol";

/** One line of what several done agents are: "#2, #3 and #5 are done: review them". */
export function groupedDoneText(numbers: number[]): string {
  const names = numbers.map((n) => `#${n}`);
  const list = names.length <= 1 ? names.join("") : `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
  return `Forkyard agents ${list} are done: review them in the Agents view.`;
}

/** A failed agent's toast: its error and the last lines of its log. */
export function failedText(notice: NoticeNotification, lines: string[]): string {
  const error = notice.agent?.error?.split("\n", 1)[0];
  const head = notice.agent ? `Forkyard agent #${notice.agent.number} failed` : notice.message;
  const tail = lines.filter((l) => l.trim() && l.trim() !== error?.trim()).slice(-2);
  return [error ? `${head}: ${error}` : head, ...tail].join(" — ");
}
