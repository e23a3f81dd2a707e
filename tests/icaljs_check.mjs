// Parses iCalendar files with ical.js (the parser in Thunderbird) and prints what it understood as JSON.
// Usage: node icaljs_check.mjs <path to ical.js module> <file.ics>...
// Anything ical.js logs, and any TZID it cannot resolve to a VTIMEZONE of the file, is a warning.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [, , modulePath, ...files] = process.argv;
const ICAL = (await import(pathToFileURL(modulePath).href)).default;

const warnings = [];
for (const level of ["log", "info", "warn", "error", "debug"]) {
  console[level] = (...args) => warnings.push(`console.${level}: ${args.join(" ")}`);
}

function time(t) {
  if (!t) return null;
  return {
    utc: t.toJSDate().toISOString(),
    local: t.toString(),
    tzid: t.zone ? t.zone.tzid : null,
  };
}

const out = {};
for (const file of files) {
  const fileWarnings = [];
  const result = { warnings: fileWarnings, calendar: {}, events: [], freebusy: [] };
  try {
    const root = new ICAL.Component(ICAL.parse(readFileSync(file, "utf8")));
    const zones = new Set();
    for (const vtz of root.getAllSubcomponents("vtimezone")) {
      const zone = new ICAL.Timezone(vtz);
      zones.add(zone.tzid);
    }
    for (const prop of root.getAllProperties()) {
      result.calendar[prop.name] = prop.toJSON().slice(3).join(",");
    }
    for (const vevent of root.getAllSubcomponents("vevent")) {
      const event = new ICAL.Event(vevent);
      for (const name of ["dtstart", "dtend"]) {
        const tzid = vevent.getFirstProperty(name).getParameter("tzid");
        if (tzid && !zones.has(tzid)) fileWarnings.push(`${event.uid}: TZID ${tzid} has no VTIMEZONE`);
        if (tzid && event[name === "dtstart" ? "startDate" : "endDate"].zone.tzid !== tzid) {
          fileWarnings.push(`${event.uid}: ${name} not read in ${tzid}`);
        }
      }
      result.events.push({
        uid: event.uid,
        summary: event.summary,
        description: event.description,
        location: event.location,
        sequence: event.sequence,
        status: vevent.getFirstPropertyValue("status"),
        url: vevent.getFirstPropertyValue("url"),
        start: time(event.startDate),
        end: time(event.endDate),
        dtstamp: time(vevent.getFirstPropertyValue("dtstamp")),
        last_modified: time(vevent.getFirstPropertyValue("last-modified")),
      });
    }
    for (const vfb of root.getAllSubcomponents("vfreebusy")) {
      for (const prop of vfb.getAllProperties("freebusy")) {
        for (const period of prop.getValues()) {
          result.freebusy.push({
            fbtype: prop.getParameter("fbtype"),
            start: period.start.toJSDate().toISOString(),
            end: period.getEnd().toJSDate().toISOString(),
          });
        }
      }
    }
  } catch (err) {
    fileWarnings.push(`parse error: ${err && err.stack ? err.stack : err}`);
  }
  fileWarnings.push(...warnings.splice(0));
  out[file] = result;
}
process.stdout.write(JSON.stringify(out));
